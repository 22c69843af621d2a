"""The compiled training engine: one member's pure step (:mod:`~bnlab.engine.step`), the
compiled chunk of many members over a device mesh (:mod:`~bnlab.engine.chunk`), and
what they stand on: batches, devices, the optimizer, the compile set and the host loop."""
