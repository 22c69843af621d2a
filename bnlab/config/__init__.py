"""A run's config: the typed schema Hydra composes into (:mod:`~bnlab.config.schema`) and
the one check of its values at start (:mod:`~bnlab.config.validate`)."""

from bnlab.config.schema import (
    MODEL_SCHEMAS,
    Choice,
    DataConfig,
    LoggerConfig,
    LossConfig,
    NormConfig,
    OptimizerConfig,
    ParallelConfig,
    ProbeConfig,
    ResumeConfig,
    SweepConfig,
    TrainConfig,
    dotted,
    model_dict,
    register,
    to_yaml_dict,
    typed,
)
from bnlab.config.validate import check, check_data, check_overrides, check_unknown

__all__ = [
    "MODEL_SCHEMAS", "Choice", "DataConfig", "LoggerConfig", "LossConfig", "NormConfig",
    "OptimizerConfig", "ParallelConfig", "ProbeConfig", "ResumeConfig", "SweepConfig",
    "TrainConfig", "check", "check_data", "check_overrides", "check_unknown", "dotted", "model_dict",
    "register", "to_yaml_dict", "typed",
]  # fmt: skip
