"""The run record on disk: its tables and their schema (:mod:`~bnlab.record.tables`), the run
directory and its members, checkpoints, and the guards that make resume safe."""
