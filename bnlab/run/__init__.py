"""A run from start to finish: the wiring of config, data, model and engine
(:mod:`~bnlab.run.build`), the host loop that drives chunks and writes the record
(:mod:`~bnlab.run.driver`), and the process around it (:mod:`~bnlab.run.session`)."""
