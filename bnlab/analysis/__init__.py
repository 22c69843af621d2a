"""Reading records back: runs and sweeps as tables (:mod:`~bnlab.analysis.runs`), intervals
over seeds (:mod:`~bnlab.analysis.stats`), figures (:mod:`~bnlab.analysis.plot`) and the
files a report writes (:mod:`~bnlab.analysis.report`). Never imports the engine."""
