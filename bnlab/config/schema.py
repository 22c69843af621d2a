"""The typed config of a run: the schema Hydra starts from, and its dataclasses.

The schema holds types only (every value is ``MISSING``); the values live in
``configs/``. Hydra starts the primary config from this schema (``train_schema``), so
a misspelled key, a wrongly typed value or an unknown choice is rejected while the
command line is read. :func:`typed` turns a composed config into these dataclasses,
the only form the builders take; :mod:`bnlab.config.validate` then tests every value
and every combination once, at start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class Choice(StrEnum):
    """A closed set of names (compares equal to its name, saves as its name)."""

    def __str__(self) -> str:
        return self.value


Standardize = Choice("Standardize", {n: n for n in ("none", "per_pixel")})
ProbeSplit = Choice("ProbeSplit", {n: n for n in ("test", "train", "validation")})
NormPosition = Choice("NormPosition", {n: n for n in ("before", "after")})
OptimizerName = Choice("OptimizerName", {n: n for n in ("sgd", "momentum", "adam", "optax")})
Schedule = Choice("Schedule", {n: n for n in ("constant", "cosine", "step")})
NormKind = Choice("NormKind", {n: n for n in ("batch", "layer", "rms", "group", "batch_renorm",
                                                "none")})  # fmt: skip
BnMode = Choice("BnMode", {n: n for n in ("batch", "eval")})
IcsAt = Choice("IcsAt", {n: n for n in ("before", "after")})
DropoutMode = Choice("DropoutMode", {n: n for n in ("eval", "train")})
StepLoop = Choice("StepLoop", {n: n for n in ("auto", "scan", "host")})
Precision = Choice("Precision", {n: n for n in ("fp32", "bf16")})


@dataclass
class DataConfig:
    name: str = MISSING
    dir: str | None = MISSING
    path: str | None = MISSING
    data_dir: str | None = MISSING
    download: bool = MISSING
    scale: bool = MISSING
    standardize: Standardize = MISSING
    flatten: bool = MISSING
    validation: int = MISSING
    validation_seed: int = MISSING
    probe_size: Any = MISSING  # a positive int, or "auto" (bnlab.data.resolve_probe_size)
    probe_split: ProbeSplit = MISSING
    probe_seed: int = MISSING


# The model group: ``model._target_`` names any linen or NNX Module class, the other
# keys are its constructor's arguments (bnlab.models.build). The presets' keys are
# typed; ``model._target_=pkg.mod.Net`` on a preset drops the preset's own keys
# (``typed``), ``+model.key=value`` adds the new model's.
@dataclass
class MLPConfig:
    TARGET: ClassVar[str] = "bnlab.models.MLP"
    _target_: str = MISSING
    features: list[int] = MISSING
    activation: Any = MISSING  # a name (relu, gelu, silu, tanh, sigmoid, linear) or {_target_: fn}
    norm_position: NormPosition = MISSING
    init_std: Any = MISSING  # a std > 0, he (He normal), or null (LeCun normal)
    use_bias: bool = MISSING


@dataclass
class CNNConfig(MLPConfig):
    TARGET: ClassVar[str] = "bnlab.models.CNN"
    channels: list[int] = MISSING


@dataclass
class VGGConfig:
    TARGET: ClassVar[str] = "bnlab.models.VGG"
    _target_: str = MISSING
    stages: list[list[int]] = MISSING
    features: list[int] = MISSING
    activation: Any = MISSING
    use_bias: bool = MISSING


@dataclass
class ResNetConfig:
    TARGET: ClassVar[str] = "bnlab.models.ResNet"
    _target_: str = MISSING
    depth: int = MISSING
    width: int = MISSING
    shortcut: str = MISSING
    activation: Any = MISSING
    use_bias: bool = MISSING


MODEL_SCHEMAS = {"mlp": MLPConfig, "cnn": CNNConfig, "vgg": VGGConfig, "resnet": ResNetConfig}


@dataclass
class NormConfig:
    name: str = MISSING  # the variant's label; "none" is no normalization
    use_scale: bool = MISSING
    use_bias: bool = MISSING
    stats_grad: bool = MISSING
    momentum: float | None = MISSING  # None: each layer's own
    epsilon: float | None = MISSING
    ghost_batch_size: int | None = MISSING
    sync: bool = MISSING
    center_only: bool = MISSING
    noise_mean: float = MISSING
    noise_std: float = MISSING
    kind: NormKind = MISSING  # which normalizer: batch (BN and its variants), layer, ...
    groups: int = MISSING  # GroupNorm's number of channel groups
    r_max: float = MISSING  # Batch Renorm's limits and warm-up (steps)
    d_max: float = MISSING
    renorm_warmup: int = MISSING
    r_max_steps: int = MISSING
    d_max_steps: int = MISSING
    weight_standardization: bool = MISSING  # standardize every conv kernel (Qiao et al.)

    @property
    def normalizes(self) -> bool:
        return self.name != "none" and self.kind != "none"

    @property
    def batch_kind(self) -> bool:
        """BN itself (the switches ghost, noise, stats_grad, center_only apply)."""
        return self.kind == "batch"

    @property
    def noisy(self) -> bool:
        return self.normalizes and bool(self.noise_mean or self.noise_std)


LossName = Choice("LossName", {n: n for n in ("softmax_cross_entropy",
    "sigmoid_binary_cross_entropy", "mean_squared_error", "own")})  # fmt: skip


@dataclass
class LossConfig:
    name: LossName = MISSING
    label_smoothing: float = MISSING
    _target_: str | None = MISSING  # loss=own: fn(outputs, labels) -> per-example loss


@dataclass
class OptimizerConfig:
    name: OptimizerName = MISSING
    lr: float = MISSING
    _target_: str | None = MISSING  # optimizer=optax: an optax factory taking learning_rate
    args: dict[str, Any] = MISSING  # its other keyword arguments
    momentum: float = MISSING
    nesterov: bool = MISSING
    b1: float = MISSING
    b2: float = MISSING
    weight_decay: float = MISSING
    schedule: Schedule = MISSING
    warmup_steps: int = MISSING
    decay_factor: float = MISSING
    boundaries: list[int] = MISSING


@dataclass
class ProbeConfig:
    every: Any = MISSING  # a positive int, or "auto" (bnlab.config.scale)
    percentiles: list[float] = MISSING
    units: list[int] = MISSING
    bn_mode: BnMode = MISSING
    dropout: DropoutMode = MISSING
    ics_every: int = MISSING
    ics_at: IcsAt = MISSING
    landscape_steps: list[float] = MISSING
    landscape_lengths: list[float] = MISSING
    sharpness_every: int = MISSING
    sharpness_batches: int = MISSING
    sharpness_iters: int = MISSING
    overlap: bool = MISSING
    sites: list[str] = MISSING
    sample: int | None = MISSING
    sample_seed: int = MISSING


@dataclass
class ParallelConfig:
    data: int = MISSING
    members: int = MISSING


@dataclass
class SweepConfig:
    lr: list[float] = MISSING
    seeds: int = MISSING


@dataclass
class ResumeConfig:
    enabled: bool = MISSING
    rebuild: bool = MISSING


@dataclass
class TensorBoardLogger:
    dir: str = MISSING


WandbMode = Choice("WandbMode", {n: n for n in ("auto", "online", "offline", "disabled")})


@dataclass
class WandbLogger:
    project: str = MISSING
    entity: str | None = MISSING
    mode: WandbMode = MISSING
    tags: list[str] = MISSING


@dataclass
class MlflowLogger:
    tracking_uri: str = MISSING
    experiment: str = MISSING


@dataclass
class CsvLogger:
    dir: str = MISSING


@dataclass
class LoggerConfig:
    """The loggers (:mod:`bnlab.loggers`): each None unless chosen (``logger=[...]``)."""

    histogram_every: int = MISSING
    histogram_bins: int = MISSING
    tensorboard: TensorBoardLogger | None = None
    wandb: WandbLogger | None = None
    mlflow: MlflowLogger | None = None
    csv: CsvLogger | None = None


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING  # a dict after typed(): {_target_: ..., constructor arguments}
    norm: NormConfig = field(default_factory=NormConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    seed: int = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    chunk_steps: Any = MISSING  # a positive int, or "auto"
    eval_every: Any = MISSING  # a positive int, or "auto" (bnlab.config.scale)
    diverge_loss: float = MISSING
    checkpoint_every: int = MISSING
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    progress: bool = MISSING
    figure: bool = MISSING
    compile_cache: str | None = MISSING
    step_loop: StepLoop = MISSING
    precision: Precision = MISSING
    objective: str = MISSING  # what hparams_search ranks (bnlab.config.validate.objective)
    import_path: list[str] = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    @property
    def is_sweep(self) -> bool:
        """Whether the run is a vectorized sweep (member records in ``<run dir>/<i>/``)."""
        return bool(self.sweep.lr) or self.sweep.seeds > 0

    @property
    def lrs(self) -> list[float]:
        return [float(v) for v in self.sweep.lr] or [float(self.optimizer.lr)]

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(max(self.sweep.seeds, 1))]


def register() -> None:
    """Register the schema as ``train_schema`` (named first in ``configs/train.yaml``),
    the presets' as ``<preset>_model_schema`` (named first in ``configs/model/<preset>.yaml``
    as ``/<preset>_model_schema@_here_``: outside the ``model`` group, so ``--help`` does
    not list them as models),
    and the resolver ``${gcd:a,b,...}`` (the greatest common divisor: a probe interval
    that divides ``steps`` and ``chunk_steps``, as ``hparams_search/lr_optuna`` derives;
    a value that is not a number, such as ``chunk_steps=auto``, is left out)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, node in MODEL_SCHEMAS.items():
        cs.store(name=f"{name}_model_schema", node=node)
    if not OmegaConf.has_resolver("gcd"):
        OmegaConf.register_new_resolver(
            "gcd", lambda *v: math.gcd(*(int(x) for x in v if str(x).isdigit()))
        )


def typed(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """The dataclasses of a composed config (a :class:`TrainConfig` passes through);
    ``model`` becomes a plain dict (choices as names), without the preset's own keys
    where ``model._target_`` names another class than the preset's."""
    if isinstance(cfg, TrainConfig):
        return cfg
    model = model_dict(cfg.model)
    out = OmegaConf.to_object(cfg)
    out.model = model  # type: ignore[union-attr]
    return out  # type: ignore[return-value]


def model_dict(node: Any) -> dict[str, Any]:
    """The ``model`` node as a dict (see :func:`typed`)."""
    schema = OmegaConf.get_type(node)
    model = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    assert isinstance(model, dict)
    if schema in MODEL_SCHEMAS.values() and model.get("_target_") != schema.TARGET:
        own = {f.name for f in fields(schema)} - {"_target_"}
        model = {k: v for k, v in model.items() if k not in own}
    return model


def to_yaml_dict(cfg: TrainConfig) -> DictConfig:
    """The config as OmegaConf would save it (choices as their names)."""
    return OmegaConf.structured(cfg)


def dotted(tree: Any, *, index_lists: bool = False, prefix: str = "") -> dict[str, Any]:
    """A plain config tree as ``{"a.b.c": leaf}``; with ``index_lists`` a list's items
    are leaves too (``"a.b[0]"``), else a list is one leaf."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= dotted(v, index_lists=index_lists, prefix=f"{prefix}{k}.")
        return out
    if index_lists and isinstance(tree, list):
        return {f"{prefix[:-1]}[{i}]": v for i, v in enumerate(tree)}
    return {prefix[:-1]: tree}
