"""Loggers: a run's rows, as its record gets them, also sent to TensorBoard, W&B, MLflow or CSV.

Chosen with ``logger=[tensorboard,wandb,mlflow,csv]`` (any subset; ``configs/logger/``).
The Parquet record stays the record of truth: the loggers read the rows the host loop
has just added to each member's :class:`~bnlab.record.tables.RunRecord` (its tables' new
column blocks) once per chunk, so they see exactly what the record holds, in the
record's names:

- ``scalars``: ``train_loss``, ``test_accuracy``, ``lr``... as they are;
- ``activations``: ``acts/<layer>/<site>/<stat>`` (pooled over the probe batch) and
  ``acts/<layer>/<site>/u<j>/<stat>`` (tracked unit j);
- ``layers``: ``layers/<layer>/<stat>``; ``ics``: ``ics/<layer>/<stat>``;
- histograms (TensorBoard, W&B): ``hist/<layer>/<site>``, every site's raw values on
  the probe batch at step 0 and every ``logger.histogram_every`` steps, computed on
  the device by :meth:`bnlab.engine.chunk.Engine.histograms` (one forward pass of the probe
  batch, only at those steps, on the probe device where there is one).

Every backend is an optional extra; a missing one is a one-line
:class:`~bnlab.errors.UserError` naming the install command, raised by :func:`check`
before anything is written. The host loop's side is :class:`Loggers` (an empty one
does nothing): ``begin`` after the start, ``request`` before the next chunk takes
the states, ``write`` after the chunk's rows, ``close`` per member, ``close_all``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.config import TrainConfig
from bnlab.errors import UserError, say
from bnlab.loggers.base import Sink, run_name, run_overrides
from bnlab.loggers.csvfiles import Csv
from bnlab.loggers.mlflow import Mlflow
from bnlab.loggers.tensorboard import TensorBoard
from bnlab.loggers.wandb import Wandb
from bnlab.record.tables import COLUMNS, RunRecord

EXTRAS = {  # logger -> (module it needs, extra that installs it)
    "tensorboard": ("tensorboardX", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "csv": (None, None),
}
MAKERS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": Mlflow, "csv": Csv}


def chosen(cfg: TrainConfig) -> list[str]:
    """The loggers ``cfg`` turns on, in a fixed order."""
    return [name for name in EXTRAS if getattr(cfg.logger, name) is not None]


def check(cfg: TrainConfig) -> None:
    """Every chosen logger can be imported and its settings make sense; raises a
    one-line :class:`UserError`. Rounds ``logger.histogram_every`` up to a multiple of
    ``chunk_steps`` (with a notice): histograms are taken between chunks."""
    for name in chosen(cfg):
        module, extra = EXTRAS[name]
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(
                f"logger={name} needs the extra '{extra}': uv sync --extra {extra} "
                f"(or pip install 'bnlab[{extra}]') ({type(e).__name__}: {e})"
            ) from None
    lg = cfg.logger
    if lg.histogram_every < 0 or lg.histogram_bins < 1:
        raise UserError(
            f"logger.histogram_every={lg.histogram_every} must be >= 0 and "
            f"logger.histogram_bins={lg.histogram_bins} >= 1"
        )
    # the host acts between chunks (with chunk_steps=auto, at multiples of probe.every)
    auto = cfg.chunk_steps == "auto"
    unit = cfg.probe.every if auto else cfg.chunk_steps
    if lg.histogram_every % unit and (lg.tensorboard or lg.wandb):
        up = -(-lg.histogram_every // unit) * unit
        what = "probe.every" if auto else "chunk_steps"
        say(f"logger.histogram_every={lg.histogram_every} rounded up to {up}, a multiple "
            f"of {what}={unit}")  # fmt: skip
        lg.histogram_every = up


def _member_info(cfg: TrainConfig, member: Any, run_dir: Path, group: str | None) -> dict:
    from omegaconf import OmegaConf

    from bnlab.config import to_yaml_dict
    from bnlab.record.members import member_config

    conf = OmegaConf.to_container(to_yaml_dict(member_config(cfg, member)), resolve=True)
    saved = run_dir / ".hydra" / "overrides.yaml"  # written before the loggers start
    overrides = run_overrides(list(OmegaConf.load(saved))) if saved.is_file() else {}
    return dict(config=conf, dir=run_dir, name=run_name(overrides, run_dir.name), group=group,
                overrides=overrides)  # fmt: skip


def make_sinks(cfg: TrainConfig, member: Any, group: str | None, floor: int) -> list[Sink]:
    """The sinks of one member, in the order of :data:`EXTRAS`; one that cannot start
    (a tracking server that refuses, a W&B login that fails) is a one-line
    :class:`UserError`."""
    info = _member_info(cfg, member, Path(member.dir), group)
    sinks = []
    for name in chosen(cfg):
        try:
            sinks.append(MAKERS[name](getattr(cfg.logger, name), info, floor))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"logger={name} could not start: {type(e).__name__}: {first}") from e
    return sinks


# --------------------------------------------------------------------------- the host side


class Loggers:
    """Every member's sinks, fed from the host loop once per chunk."""

    def __init__(self, cfg: TrainConfig | None = None, members: list | None = None,
                 group: str | None = None):  # fmt: skip
        self.cfg, self.members, self.group = cfg, members or [], group
        self.sinks: list[list[Sink]] = []  # per member, made by begin()
        self.every = cfg.logger.histogram_every if cfg else 0
        self.bins = cfg.logger.histogram_bins if cfg else 0
        self.floor = -1  # rows at or before it were logged by an earlier process
        self.cursor: dict[tuple[int, str], tuple[int, int]] = {}  # -> (id(blocks), done)
        self.pending: list[tuple[int, Any]] = []  # (step, histograms future)
        self.open: list[bool] = []

    @classmethod
    def create(cls, cfg: TrainConfig, members: list, workdir: Path, hydra_cfg: Any = None,
               ) -> Loggers:  # fmt: skip
        """The loggers of ``cfg`` for ``members`` (none chosen: an empty one, which
        does nothing); their sinks are made by :meth:`begin`."""
        if not chosen(cfg):
            return cls()
        return cls(cfg, members, sweep_group(cfg, Path(workdir), hydra_cfg))

    def __bool__(self) -> bool:
        return bool(self.members)

    def wants_histograms(self) -> bool:
        return (
            bool(self.every)
            and bool(self.cfg)
            and bool(self.cfg.logger.tensorboard or self.cfg.logger.wandb)
        )

    def begin(self, step: int, engine: Any, states: Any, done: list[bool]) -> None:
        """The run starts (or resumes) at ``step``: every member not ``done`` gets its
        sinks (rows up to ``step`` were sent by an earlier process); a fresh run's
        histograms at step 0."""
        if not self.members:
            return
        self.floor = step if step > 0 else -1
        self.sinks = [
            [] if d else make_sinks(self.cfg, m, self.group, self.floor)
            for m, d in zip(self.members, done, strict=True)
        ]  # type: ignore[arg-type]
        self.open = [not d for d in done]
        if step == 0 and self.wants_histograms():
            self.request(step, engine, states, force=True)

    def request(self, step: int, engine: Any, states: Any, force: bool = False) -> None:
        """Ask the engine for the histograms at ``step`` when they are due (``states``: a
        copy no chunk donates, :meth:`bnlab.engine.chunk.Engine.keep`)."""
        if self.wants_histograms() and (force or step % self.every == 0):
            self.pending.append((step, engine.histograms(states, self.bins)))

    def write(self, records: Any, only: int | None = None, ready_only: bool = False) -> None:
        """Send every open member's new rows (or member ``only``'s) to its sinks, and
        the histograms asked for, if any (not with ``only``; with ``ready_only``, those
        the probe device has finished, in order: the loop does not wait for them while
        a chunk runs)."""
        if not self.sinks:
            return
        hists = []
        if self.pending and only is None:
            import jax

            n = len(self.pending)
            if ready_only:
                ready = [all(a.is_ready() for a in jax.tree.leaves(f)) for _, f in self.pending]
                n = ready.index(False) if False in ready else n
            hists = [(step, jax.device_get(future)) for step, future in self.pending[:n]]
            self.pending = self.pending[n:]
        for i in range(len(self.sinks)) if only is None else [only]:
            if not self.open[i]:
                continue
            for table in COLUMNS:
                for cols in self._new_blocks(i, records[i], table):
                    self._each(i, "rows", table, cols)
            for step, hist in hists:
                mine = {k: {n: np.asarray(a)[i] for n, a in h.items()} for k, h in hist.items()}
                self._each(i, "histograms", step, mine)
            self._each(i, "flush")

    def _each(self, i: int, method: str, *args: Any) -> None:
        """``sink.method(*args)`` for member ``i``'s sinks; one that fails is said once
        and left out from then on (a logger must never cost the run its record)."""
        for s in list(self.sinks[i]):
            try:
                getattr(s, method)(*args)
            except Exception as e:
                say(f"logger {type(s).__name__} failed ({type(e).__name__}: {e}); "
                    "it is off for the rest of this run")  # fmt: skip
                self.sinks[i].remove(s)

    def _new_blocks(self, i: int, rec: RunRecord, table: str) -> list[dict[str, np.ndarray]]:
        blocks = rec.tables[table].blocks
        ident, done = self.cursor.get((i, table), (id(blocks), 0))
        if ident != id(blocks) or done > len(blocks):  # a new record, or one reloaded
            done = 0
        self.cursor[(i, table)] = (id(blocks), len(blocks))
        out = []
        for b in blocks[done:]:
            if self.floor >= 0:
                keep = np.asarray(b["step"]) > self.floor
                if not keep.any():
                    continue
                b = {c: np.asarray(v)[keep] for c, v in b.items()}
            out.append(b)
        return out

    def close(self, i: int, record: RunRecord, summary: dict[str, Any]) -> None:
        """Member ``i`` is done: its last rows, then its sinks' last word."""
        if not self.sinks or not self.open[i]:
            return
        self.write({i: record}, only=i)  # type: ignore[arg-type]
        for s in self.sinks[i]:
            _safely(s.close, summary)
        self.open[i] = False

    def close_all(self, records: list[RunRecord], summaries: list[dict[str, Any]]) -> None:
        """Close every member still open (after an interrupt, say), the histograms
        asked for sent first."""
        if self.pending:
            self.write(records)
        for i in range(len(self.sinks)):
            self.close(i, records[i], summaries[i] or {})


def _safely(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as e:  # a logger must never cost the run its record
        say(f"a logger failed to close ({type(e).__name__}: {e})")


def sweep_group(cfg: TrainConfig, workdir: Path, hydra_cfg: Any) -> str | None:
    """The name that groups the runs of one sweep (W&B's group, an MLflow tag): the
    multirun's sweep dir, or a vectorized sweep's run dir; None for a single run."""
    sweep_dir = None
    if hydra_cfg is not None:
        try:
            from hydra.types import RunMode

            if hydra_cfg.mode == RunMode.MULTIRUN:
                sweep_dir = Path(hydra_cfg.sweep.dir)
        except Exception:
            sweep_dir = None
    if sweep_dir is None and cfg.is_sweep:
        sweep_dir = workdir
    if sweep_dir is None:
        return None
    try:
        return str(sweep_dir.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(sweep_dir)
