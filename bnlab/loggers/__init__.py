"""Experiment loggers beside the record: one module per backend (TensorBoard, W&B, MLflow,
CSV) behind one interface (:class:`~bnlab.loggers.base.Sink`), fed by the run's
:class:`~bnlab.loggers.fanout.Loggers`."""

from bnlab.loggers.fanout import Loggers, check, chosen, make_sinks, sweep_group

__all__ = ["Loggers", "check", "chosen", "make_sinks", "sweep_group"]
