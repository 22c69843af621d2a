"""The Python API: train a run or a vectorized sweep in the calling process.

::

    import flax.linen as nn
    from bnlab import api

    class Net(nn.Module):            # your own model, defined right here
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Dense(32)(x.reshape(len(x), -1))
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(10)(nn.relu(x))

    sweep = api.train("data=digits", model=Net, steps=300, sweep={"lr": [0.05, 0.5]})
    sweep.runs                      # one row per member (bnlab.analysis.runs.Sweep)
    variables = api.load_variables(sweep.members[0].path)   # for Net().apply(variables, x)

The config is composed as ``python -m bnlab.train`` composes it (Hydra strings, then
keyword arguments: ``steps=300``, ``optimizer={"lr": 0.1}`` or ``**{"optimizer.lr":
0.1}``), checked by the same checks, and the record written the same way into
``workdir`` (default: a new ``outputs/<date>/<time>``, as the command line), with its
``train.log``. ``model`` is a linen or NNX Module class, or a linen instance (its
fields become ``model.*``); a class defined in a notebook or a function is recorded
by its name, so the record's tables and figures read back anywhere, but training it
again needs the class. Mistakes raise :class:`bnlab.errors.UserError` (one line).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnlab.errors import LOG, UserError, one_line

MODULE = "bnlab_api_models"  # where classes that cannot be imported by name are found


def train(*overrides: str, model: Any = None, workdir: str | Path | None = None,
          **settings: Any) -> Any:  # fmt: skip
    """Train one run or a vectorized sweep here; returns its record loaded
    (:class:`~bnlab.analysis.runs.Run`, or :class:`~bnlab.analysis.runs.Sweep` for a
    sweep). Raises :class:`~bnlab.errors.UserError`."""
    t0 = time.perf_counter()
    from bnlab.analysis.runs import load_run, load_sweep
    from bnlab.run import driver, session

    args = [*overrides, *model_overrides(model), *as_overrides(settings)]
    cfg, run_dir = compose(args)
    workdir = Path(workdir if workdir is not None else run_dir)
    session.setup_process(cfg)
    handler = _log_to(workdir)
    try:
        summaries = driver.train_and_evaluate(cfg, workdir, args, t0=t0)
    finally:
        LOG.removeHandler(handler)
        handler.close()
    return load_sweep(workdir) if len(summaries) > 1 else load_run(workdir)


def compose(overrides: list[str]) -> tuple[Any, str]:
    """The config ``python -m bnlab.train OVERRIDES`` would run, and its run directory
    (``hydra.run.dir``). Hydra's own errors become one-line :class:`UserError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from bnlab import config
    from bnlab.config.tree import config_dir

    config.register()
    if GlobalHydra.instance().is_initialized():  # e.g. called from a Hydra app
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
            run_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(one_line(e)) from None
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir


def as_overrides(settings: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keyword arguments as Hydra overrides: nested mappings as dotted keys,
    ``None`` as null, booleans as true/false, sequences as ``[a,b]``."""
    out: list[str] = []
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and "_target_" not in v:
            out += as_overrides(v, key + ".")
        else:
            out.append(f"{key}={_value(v)}")
    return out


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str) and any(c in v for c in " ,[]{}()'\"=:"):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)


def model_overrides(model: Any) -> list[str]:
    """``model._target_=...`` (and a linen instance's fields as ``++model.*``) for a
    Module class or instance; nothing for None (the config's model)."""
    if model is None:
        return []
    if isinstance(model, type):
        return [f"model._target_={target(model)}"]
    import flax.linen as nn

    if not isinstance(model, nn.Module):
        raise UserError(
            f"model={type(model).__name__} instance: pass a linen Module instance, or a "
            "Module class with its arguments as model.* overrides (NNX: the class)"
        )
    out = [f"model._target_={target(type(model))}"]
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name") or not f.init:
            continue
        v = getattr(model, f.name)
        if v == f.default or (v is None and f.default is dataclasses.MISSING):
            continue
        if not isinstance(v, int | float | str | bool | list | tuple | type(None)):
            raise UserError(
                f"model field {f.name}={v!r} is not a config value: pass the class, "
                f"with model.{f.name} as an override ({{_target_: ...}} for an object)"
            )
        out.append(f"++model.{f.name}={_value(v)}")
    return out


def target(cls: type) -> str:
    """A dotted name that finds ``cls`` in this process: its own where it imports
    back to it, else a name in the module :data:`MODULE` (a class defined in a
    notebook cell or inside a function)."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    mod = sys.modules.get(cls.__module__)
    if "<" not in cls.__qualname__ and mod is not None:
        obj: Any = mod
        for part in cls.__qualname__.split("."):
            obj = getattr(obj, part, None)
        if obj is cls:
            return name
    registry = sys.modules.setdefault(MODULE, types.ModuleType(MODULE))
    key = f"{cls.__name__}_{id(cls):x}"
    setattr(registry, key, cls)
    return f"{MODULE}.{key}"


def _log_to(workdir: Path) -> logging.Handler:
    """A handler writing bnlab's lines into ``workdir/train.log`` (as a Hydra job's)."""
    h = _RunLog(workdir / "train.log")
    h.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    LOG.addHandler(h)
    LOG.setLevel(logging.INFO)
    return h


class _RunLog(logging.Handler):
    """Appends records to ``path`` once its folder exists (a refused run writes no
    directory); the lines before that are kept and written first."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.waiting = path, []

    def emit(self, record: logging.LogRecord) -> None:
        self.waiting.append(self.format(record))
        if self.path.parent.is_dir():
            with open(self.path, "a") as f:
                f.write("".join(line + "\n" for line in self.waiting))
            self.waiting.clear()


def load_variables(run_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """A run's checkpoint (the newest, or the one at ``step``) as the variables of its
    model: ``{"params": ..., "batch_stats": ...}`` for ``model.apply(variables, x)``
    (linen), or :func:`load_into` for an NNX model."""
    from bnlab.record.checkpoint import Checkpoints, _ocp

    ck = Checkpoints(Path(run_dir) / "checkpoints")
    steps = ck.steps()
    if not steps:
        raise UserError(f"{run_dir} has no checkpoint (is it a run directory, not a sweep's?)")
    at = steps[-1] if step is None else step
    if at not in steps:
        raise UserError(f"{run_dir} has no checkpoint at step {at}: it has {steps}")
    try:
        state = ck._mngr.restore(at, args=_ocp().args.StandardRestore())
    finally:
        ck.close()
    return {k: state[k] for k in ("params", "batch_stats") if state.get(k)}


def load_into(model: Any, run_dir: str | Path, step: int | None = None) -> Any:
    """An NNX model with the parameters and batch statistics of a run's checkpoint
    (updated in place and returned); the model must be built as the run built it."""
    from flax import nnx

    variables = load_variables(run_dir, step)
    states = nnx.state(model, nnx.Param, nnx.BatchStat)
    for state, key in zip(states, ("params", "batch_stats"), strict=True):
        pure = nnx.to_pure_dict(state)
        _merge(pure, variables.get(key, {}))
        state.replace_by_pure_dict(pure)
        nnx.update(model, state)
    return model


def _merge(into: dict, src: Mapping) -> None:
    """Copy every leaf of ``src`` into the matching key of ``into`` (the checkpoint
    stores NNX's integer keys as strings)."""
    for k, v in src.items():
        key = next((kk for kk in into if str(kk) == str(k)), None)
        if key is None:
            raise UserError(f"the checkpoint has {k!r}, which the model does not")
        if isinstance(v, Mapping):
            _merge(into[key], v)
        else:
            into[key] = v
