"""Every value and combination of a run's config, checked once at start: each failure
is a one-line :class:`~bnlab.errors.UserError` that names the fix."""

from __future__ import annotations

import math
from typing import Any

from bnlab.config.scale import resolve
from bnlab.config.schema import TrainConfig, dotted
from bnlab.errors import UserError, say


def _positive(**values: Any) -> None:
    for key, v in values.items():
        if not (isinstance(v, int) and v >= 1):
            raise UserError(f"{key}={v} must be a positive integer")


def _finite_positive(key: str, v: float) -> None:
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"{key}={v} must be a finite number > 0")


def check(cfg: TrainConfig, local_devices: int) -> tuple[int, int]:
    """Every value and combination that needs no data; returns the device counts
    ``(data, members)`` the run uses. Raises :class:`UserError` (one line).
    ``eval_every`` and ``checkpoint_every`` are rounded up to multiples of
    ``chunk_steps`` (of ``probe.every`` with ``chunk_steps=auto``), with a notice;
    ``auto`` intervals are resolved first (:mod:`bnlab.config.scale`)."""
    resolve(cfg)
    if not (cfg.chunk_steps == "auto" or isinstance(cfg.chunk_steps, int)):
        raise UserError(f"chunk_steps={cfg.chunk_steps!r} must be a positive integer or auto")
    p, n, o = cfg.probe, cfg.norm, cfg.optimizer
    auto = cfg.chunk_steps == "auto"
    _positive(
        steps=cfg.steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        **{"probe.every": p.every, "parallel.members": cfg.parallel.members},
        **({} if cfg.data.probe_size == "auto" else {"data.probe_size": cfg.data.probe_size}),
        **({} if auto else {"chunk_steps": cfg.chunk_steps}),
    )  # fmt: skip
    for key, v in (("seed", cfg.seed), ("sweep.seeds", cfg.sweep.seeds),
                   ("probe.ics_every", p.ics_every), ("parallel.data", cfg.parallel.data),
                   ("probe.sharpness_every", p.sharpness_every)):  # fmt: skip
        if v < 0:
            raise UserError(f"{key}={v} must be >= 0")
    _positive(**{"probe.sharpness_batches": p.sharpness_batches,
                 "probe.sharpness_iters": p.sharpness_iters})  # fmt: skip
    if cfg.steps % p.every:
        raise UserError(f"steps={cfg.steps} must be a multiple of probe.every={p.every}")
    unit = p.every if auto else cfg.chunk_steps
    if unit % p.every:
        raise UserError(f"chunk_steps={unit} must be a multiple of probe.every={p.every}")
    for key in ("eval_every", "checkpoint_every"):  # the host acts between chunks
        v = getattr(cfg, key)
        if key == "checkpoint_every" and v > cfg.steps:  # at the end only: no notice
            cfg.checkpoint_every = v = -(-cfg.steps // unit) * unit
        if v % unit:
            up = -(-v // unit) * unit
            what = "probe.every" if auto else "chunk_steps"
            say(f"{key}={v} rounded up to {up}, a multiple of {what}={unit}")
            setattr(cfg, key, up)
    for key, v in (("probe.ics_every", p.ics_every), ("probe.sharpness_every", p.sharpness_every)):
        if v % p.every:
            raise UserError(f"{key}={v} must be a multiple of probe.every={p.every}")
    if any(not 0 <= q <= 100 for q in p.percentiles):
        raise UserError(f"probe.percentiles={list(p.percentiles)} must lie in [0, 100]")
    if any(u < 0 for u in p.units):
        raise UserError(f"probe.units={list(p.units)} must be >= 0")
    if not p.sites:
        raise UserError("probe.sites=[] selects no site: use ['*'] for every site")
    if p.sample is not None and p.sample < 1:
        raise UserError(f"probe.sample={p.sample} must be >= 1 positions (or null: every one)")
    if not (math.isfinite(cfg.diverge_loss) and cfg.diverge_loss > 0):
        raise UserError(f"diverge_loss={cfg.diverge_loss} must be a finite number > 0")
    # norm
    if n.momentum is not None and not 0 <= n.momentum < 1:
        raise UserError(f"norm.momentum={n.momentum} must be in [0, 1) (Flax convention)")
    if n.epsilon is not None and not n.epsilon >= 0:
        raise UserError(f"norm.epsilon={n.epsilon} must be >= 0")
    if n.noise_mean < 0 or n.noise_std < 0:
        raise UserError("norm.noise_mean and norm.noise_std must be >= 0")
    _check_variant(n)
    # optimizer
    for i, lr in enumerate(cfg.lrs):
        _finite_positive("optimizer.lr" if not cfg.sweep.lr else f"sweep.lr[{i}]", lr)
    if len(set(cfg.lrs)) < len(cfg.lrs):
        raise UserError(f"sweep.lr has repeated values: {cfg.lrs}")
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise UserError(f"loss.label_smoothing={cfg.loss.label_smoothing} must be in [0, 1)")
    if (cfg.loss.name == "own") != bool(cfg.loss._target_):
        raise UserError("loss._target_=pkg.module.fn goes with loss=own (and loss=own needs it)")
    if o.name == "optax" and not o._target_:
        raise UserError("optimizer=optax needs optimizer._target_=..., e.g. optax.adamw")
    if o.name not in ("adam", "optax") and not 0 <= o.momentum < 1:
        raise UserError(f"optimizer.momentum={o.momentum} must be in [0, 1)")
    if o.name == "adam" and not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
        raise UserError(f"optimizer.b1={o.b1} and b2={o.b2} must be in [0, 1)")
    if o.weight_decay < 0 or o.warmup_steps < 0:
        raise UserError("optimizer.weight_decay and optimizer.warmup_steps must be >= 0")
    # devices
    data_dev = cfg.parallel.data or local_devices
    mem_dev = cfg.parallel.members
    if data_dev * mem_dev > local_devices:
        raise UserError(
            f"parallel.data={cfg.parallel.data} x parallel.members={mem_dev} asks for more "
            f"devices than the {local_devices} local device(s); on CPU, simulate more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={data_dev * mem_dev}"
        )
    if cfg.batch_size % data_dev:
        raise UserError(
            f"batch_size={cfg.batch_size} must be divisible by parallel.data={data_dev} "
            "(every device takes an equal share of the batch)"
        )
    n_lr, n_seed = len(cfg.lrs), len(cfg.seeds)
    if mem_dev > 1 and not (n_lr % mem_dev == 0 or (n_lr == 1 and n_seed % mem_dev == 0)):
        raise UserError(
            f"parallel.members={mem_dev} must divide the {n_lr} learning rates of sweep.lr "
            f"(or, with one learning rate, the {n_seed} seeds of sweep.seeds)"
        )
    local = cfg.batch_size // data_dev
    if n.normalizes and n.kind in ("batch", "batch_renorm"):
        ghost = n.ghost_batch_size
        if ghost is not None and (ghost < 2 or local % ghost):
            raise UserError(
                f"norm.ghost_batch_size={ghost} must divide the batch of {local} examples "
                "(batch_size, per device) and be >= 2"
            )
        if ghost is None and local < 2 and not (n.sync and data_dev > 1):
            raise UserError(
                f"BN over a batch of {local} example(s) per device is degenerate "
                "(its output is beta): use batch_size >= 2 per device, or norm=none"
            )
    objective(cfg.objective, True, cfg.data.validation > 0)  # the name; classes: check_data
    _ranges(cfg)  # after the checks with a more specific message
    return data_dev, mem_dev


def _check_variant(n: Any) -> None:
    """The settings of the normalizers beside BN (``norm.kind``)."""
    if n.normalizes and n.kind != "batch":
        bn_only = {"ghost_batch_size": n.ghost_batch_size is not None, "center_only": n.center_only,
                   "stats_grad": not n.stats_grad, "noise_mean": bool(n.noise_mean),
                   "noise_std": bool(n.noise_std)}  # fmt: skip
        for key, set_ in bn_only.items():
            if set_:
                raise UserError(f"norm.{key} applies to BN only (norm.kind=batch), not to "
                                f"norm.kind={n.kind}: drop it or choose norm=bn")  # fmt: skip
    if n.groups < 1:
        raise UserError(f"norm.groups={n.groups} must be >= 1")
    if not (n.r_max >= 1 and n.d_max >= 0):
        raise UserError(f"norm.r_max={n.r_max} must be >= 1 and norm.d_max={n.d_max} >= 0")
    if not 0 <= n.renorm_warmup <= min(n.r_max_steps, n.d_max_steps):
        raise UserError(
            f"norm.renorm_warmup={n.renorm_warmup} must lie in [0, min(norm.r_max_steps, "
            f"norm.d_max_steps)] ({n.r_max_steps}, {n.d_max_steps})"
        )


def check_data(cfg: TrainConfig, num_train: int, num_probe: int, image_ndim: int) -> None:
    """The checks that need the loaded dataset's sizes; one-line :class:`UserError`.
    (The model's: :func:`bnlab.models.check_input` and :func:`bnlab.models.build_networks`.)"""
    if cfg.batch_size > num_train:
        raise UserError(f"batch_size={cfg.batch_size} exceeds the {num_train} training examples")
    sharp = cfg.probe.sharpness_batches * cfg.batch_size
    if cfg.probe.sharpness_every and sharp > num_train:
        raise UserError(
            f"probe.sharpness_batches={cfg.probe.sharpness_batches} batches of batch_size="
            f"{cfg.batch_size} need {sharp} training examples, more than the {num_train}: "
            "use fewer batches"
        )
    n = cfg.norm
    if n.normalizes and n.ghost_batch_size and cfg.probe.bn_mode == "batch":
        if num_probe % n.ghost_batch_size:
            raise UserError(
                f"norm.ghost_batch_size={n.ghost_batch_size} must divide the probe batch of "
                f"{num_probe} examples (BN in train mode on it); set data.probe_size to a "
                "multiple of it, or probe.bn_mode=eval"
            )


METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_accuracy",
           "train_loss")  # fmt: skip


def objective(name: str, classes: bool, validation: bool) -> str:
    """The final metric Hydra's sweepers rank for ``objective=name`` (the one rule):
    ``auto`` is the accuracy where the task has ``classes``, else the loss, on the
    validation split where there is one, else the test split. A name that is not a
    metric, a ``val_*`` without a validation split, an accuracy without classes: one
    line (:class:`UserError`)."""
    split = "val" if validation else "test"
    if name == "auto":
        return f"{split}_accuracy" if classes else f"{split}_loss"
    if name not in METRICS:
        raise UserError(
            f"objective={name} is not a metric: use auto or one of {', '.join(METRICS)}"
        )
    if name.startswith("val_") and not validation:
        raise UserError(f"objective={name} needs a validation split: set data.validation=N")
    if name.endswith("_accuracy") and not classes:
        raise UserError(f"objective={name}: the task has no classes (float targets), so no "
                        f"accuracy is recorded: use objective={split}_loss or auto")  # fmt: skip
    return name


SEED_MAX = 2**31 - 1  # jax.random.key takes int32 seeds


def _ranges(cfg: TrainConfig) -> None:
    """Values checked against what the run will do: every number finite, seeds in
    range, lists that must hold something, intervals that fall within ``steps``."""
    from omegaconf import OmegaConf

    from bnlab.config.schema import to_yaml_dict

    for key, v in dotted(OmegaConf.to_container(to_yaml_dict(cfg)), index_lists=True).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{key}={v} must be a finite number")
    p = cfg.probe
    last = cfg.seed + max(cfg.sweep.seeds, 1) - 1
    if last > SEED_MAX:
        what = f"seed={cfg.seed}" + (
            f" with sweep.seeds={cfg.sweep.seeds}" if cfg.sweep.seeds else ""
        )
        raise UserError(f"{what} reaches seed {last}: seeds must be <= {SEED_MAX}")
    if p.sample_seed < 0:
        raise UserError(f"probe.sample_seed={p.sample_seed} must be >= 0")
    if not p.percentiles:
        raise UserError("probe.percentiles=[] needs at least one percentile, e.g. [50]")
    if p.ics_every > cfg.steps:
        raise UserError(
            f"probe.ics_every={p.ics_every} exceeds steps={cfg.steps}: no gradient-ICS probe "
            "would run; use a value <= steps, or 0 for none"
        )
    if p.sharpness_every > cfg.steps:
        raise UserError(
            f"probe.sharpness_every={p.sharpness_every} exceeds steps={cfg.steps}: no sharpness "
            "probe would run; use a value <= steps, or 0 for none"
        )
    if p.ics_every and not (p.landscape_steps and p.landscape_lengths):
        raise UserError("probe.landscape_steps and probe.landscape_lengths need at least one "
                        "point each with probe.ics_every > 0")  # fmt: skip


def check_unknown(composed: Any, typed_cfg: TrainConfig) -> None:
    """Refuse a key the command line added (``+new.key=...``) that the schema drops:
    a misspelled key is refused, with or without ``+``."""
    from omegaconf import OmegaConf

    from bnlab.config.schema import to_yaml_dict

    given = OmegaConf.to_container(composed, resolve=False)
    given.pop("hydra", None)
    given.pop("model", None)  # a model's arguments: checked against its class (check_model)
    kept = set(dotted(OmegaConf.to_container(to_yaml_dict(typed_cfg)), index_lists=True))
    for key in dotted(given, index_lists=True):
        base = key.split("[", 1)[0]
        if base not in kept and not any(k.startswith(base + "[") for k in kept):
            raise UserError(
                f"{base} is not a bnlab setting (misspelled?): see python -m bnlab.train "
                "--help, or --cfg job for every key"
            )


def check_overrides(cfg: TrainConfig, overrides: list[str]) -> None:
    """Settings given on the command line that cannot take effect."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    if cfg.sweep.lr and "optimizer.lr" in keys:
        raise UserError(
            f"optimizer.lr has no effect beside sweep.lr={list(cfg.sweep.lr)} (the sweep's "
            "rates are the run's): drop one of them"
        )
