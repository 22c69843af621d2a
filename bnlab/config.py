"""Typed schema of the config tree, registered with Hydra's ConfigStore.

The schema holds types only (every value is ``MISSING``); the values live in
``configs/``. Because the primary config starts from this schema, Hydra rejects a
misspelled key or a wrongly typed value with a one-line message before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    dir: str | None = MISSING
    path: str | None = MISSING
    data_dir: str | None = MISSING
    download: bool = MISSING
    scale: bool = MISSING
    standardize: str = MISSING
    flatten: bool = MISSING
    validation: int = MISSING
    validation_seed: int = MISSING
    probe_size: int = MISSING
    probe_split: str = MISSING
    probe_seed: int = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    features: list[int] = MISSING
    channels: list[int] = MISSING
    activation: str = MISSING
    norm_position: str = MISSING
    init_std: float | None = MISSING
    use_bias: bool = MISSING


@dataclass
class NormConfig:
    name: str = MISSING
    use_scale: bool = MISSING
    use_bias: bool = MISSING
    stats_grad: bool = MISSING
    momentum: float = MISSING
    epsilon: float = MISSING
    ghost_batch_size: int | None = MISSING
    sync: bool = MISSING
    center_only: bool = MISSING
    noise_mean: float = MISSING
    noise_std: float = MISSING


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    b1: float = MISSING
    b2: float = MISSING
    weight_decay: float = MISSING
    schedule: str = MISSING
    warmup_steps: int = MISSING
    decay_factor: float = MISSING
    boundaries: list[int] = MISSING


@dataclass
class ProbeConfig:
    every: int = MISSING
    percentiles: list[float] = MISSING
    units: list[int] = MISSING
    bn_mode: str = MISSING
    ics_every: int = MISSING
    landscape_steps: list[float] = MISSING
    overlap: bool = MISSING


@dataclass
class ParallelConfig:
    data: int = MISSING


@dataclass
class SweepConfig:
    lr: list[float] = MISSING
    seeds: int = MISSING


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    seed: int = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    chunk_steps: int = MISSING
    eval_every: int = MISSING
    diverge_loss: float = MISSING
    checkpoint_every: int = MISSING
    resume: bool = MISSING
    progress: bool = MISSING
    figure: bool = MISSING
    compile_cache: str | None = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register() -> None:
    """Register the schema as ``train_schema`` (named first in ``configs/train.yaml``)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
