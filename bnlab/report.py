"""``python -m bnlab.report RUN_OR_SWEEP_DIR`` and ``bnlab-plot``: a record's figures and
sweep summary, written by :mod:`bnlab.analysis.report` (the CLI entry, thin)."""

from bnlab.analysis.report import SweepSummary, main

__all__ = ["SweepSummary", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
