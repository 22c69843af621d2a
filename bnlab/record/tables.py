"""The run record: what a run writes into its output directory (the one schema).

A run directory (Hydra's output dir) holds:

- ``.hydra/config.yaml``, ``.hydra/overrides.yaml``: the resolved config and the
  command-line overrides (written by Hydra).
- ``scalars.parquet``, one row per step x metric, columns
  ``step`` (int64, training steps done), ``name`` (str), ``value`` (float64). Names:
  ``train_loss`` and ``train_accuracy`` (means over the ``probe.every`` steps ending
  at ``step``), ``test_loss`` and ``test_accuracy`` (whole test split, BN in eval
  mode, every ``eval_every`` steps and at step 0), ``lr`` (learning rate at ``step``);
  no ``*_accuracy`` for a task without classes (float targets). With
  ``probe.sharpness_every`` > 0, every that many steps: ``sharpness`` (the top
  eigenvalue of the training loss's Hessian at the parameters after ``step`` steps, on
  ``probe.sharpness_batches`` fixed training batches, BN in train mode over each:
  :mod:`bnlab.engine.diagnostics`) and ``two_over_lr`` (2 / ``lr``, the edge of
  stability of plain gradient descent, Cohen et al. 2021).
- ``activations.parquet``, one row per step x layer x site x unit x statistic, columns
  ``step`` (int64), ``layer`` (str, ``layer1``...; a module path such as
  ``stage1/block1/norm1`` for models found by interception), ``site`` (str: ``prenorm``,
  ``pre``, ``post`` for the built-ins; ``in``, ``out`` for the others; see
  :mod:`bnlab.models`; a site name ``a/b/c`` is layer ``a/b``, site ``c``), ``unit`` (int64: -1 = pooled over
  every unit and example of the probe batch; j >= 0 = unit/feature map j alone; at conv
  sites the percentiles, pooled and per unit, are over ``probe.sample`` fixed positions,
  not every value, the means and stds over every value: README, "What a run writes",
  gives the measured error),
  ``stat`` (str: ``mean``, ``std``, ``p15``, ``p50``, ``p85``... per
  ``probe.percentiles``; ``dead_fraction``, unit -1, at the sites an activation
  produces: the fraction of units exactly 0 for every example and position of the
  probe batch), ``value`` (float64). Measured on the fixed probe batch at
  step 0 and every ``probe.every`` steps.
- ``layers.parquet``, one row per step x layer x statistic, columns ``step``,
  ``layer``, ``stat``, ``value``: the parameter statistics of
  :func:`bnlab.measure.layer_stats` (weight and gradient norms, ``update_ratio`` =
  ||delta W|| / ||W|| of the last step's applied update, 0 at step 0, gamma/beta,
  running mean/var summaries; the built-ins' ``layer{i}``, other models' modules by path,
  :func:`bnlab.measure.module_stats`) at the same steps as the activations; per BN
  layer also ``bn_momentum`` and ``bn_epsilon``, the values it ran with (the model's
  own, or ``norm.momentum``/``norm.epsilon`` where set); per scale-invariant layer (its
  output goes straight into a normalizer) ``effective_lr`` = ``lr`` / ``weight_norm``^2
  (:func:`bnlab.measure.effective_lr`).
- ``ics.parquet``, one row per step x layer x statistic, columns ``step``, ``layer``,
  ``stat``, ``value``: the gradient-ICS and landscape probes of Santurkar et al. 2018
  (:func:`bnlab.measure.gradient_ics`, :func:`bnlab.measure.landscape`), every
  ``probe.ics_every`` steps (empty when it is 0), measured at the parameters after
  ``step`` steps, on the batch step ``step + 1`` is about to use (``probe.ics_at=before``,
  the paper's convention) or on step ``step``'s own batch (``after``). Per layer
  (``layer1``..., ``head``): ``grad_diff_l2`` (``||G - G'||_2``), ``grad_diff_rel``
  (``||G - G'||_2 / ||G||_2``) and ``grad_cos`` (``cos(G, G')``), G the loss gradient
  w.r.t. the layer's weight matrix and G' the same after the earlier layers take the
  step's update. For ``layer`` = ``all``: ``loss_range``, ``grad_predictiveness`` and
  ``beta_smoothness`` along the gradient at ``probe.landscape_steps`` multiples of the
  lr-scaled gradient step, the same with suffix ``_len`` at ``probe.landscape_lengths``
  distances along the descent direction (equal step length for every network), and
  ``grad_l2`` (the norm of the whole gradient there). May hold non-finite values (a
  loss that overflows along the path is a result).
- ``summary.json``: ``status`` (``running``, ``finished``, ``diverged``,
  ``interrupted``), ``step`` (steps done and recorded), ``steps`` (steps asked for),
  ``diverged_at`` (first step whose training loss was non-finite or above
  ``diverge_loss``, or null) and ``diverge_reason`` (``nonfinite`` or
  ``loss_above_limit``), ``final`` (last finite value of every scalar),
  ``steps_per_sec`` (steps over the loop's wall time, compilation left out),
  ``wall_time_s``, ``first_chunk_s`` (process start to the end of the first chunk),
  ``compile_s``, ``chunk_steps`` (the chunk length used), ``devices``, ``platform``,
  ``probe_device``, ``data_source``, and ``figures`` (true once drawn).
- ``checkpoints/``: Orbax checkpoints of the train state (for resume), each
  ``<step>/`` with ``bnlab_checksums.json`` (its files' SHA-256 and the digest of every
  table's rows up to ``step``: :mod:`bnlab.record.checkpoint`).
- ``.replaced/``: what a resume could not use (``checkpoint-<step>``) and what
  ``resume.enabled=false`` found in the directory (``record-<n>/``); never deleted.
- ``figures/``: PNG figures made at the end of the run.

Tables are rewritten whole and atomically (temp file, then rename), rows in step
order, at each checkpoint and at the end; a checkpoint is written only after the rows
up to its step, so a killed run leaves a consistent record up to its last checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

SCALARS = "scalars.parquet"
ACTIVATIONS = "activations.parquet"
LAYERS = "layers.parquet"
ICS = "ics.parquet"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"

COLUMNS = {
    SCALARS: ["step", "name", "value"],
    ACTIVATIONS: ["step", "layer", "site", "unit", "stat", "value"],
    LAYERS: ["step", "layer", "stat", "value"],
    ICS: ["step", "layer", "stat", "value"],
}
STATUSES = ("running", "finished", "diverged", "interrupted")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class Table:
    """Rows of one long-format table, accumulated in column blocks."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.blocks: list[dict[str, np.ndarray]] = []

    def add(self, **cols: Any) -> None:
        """Add rows; scalar columns are repeated along the array-valued ones."""
        lengths = {np.size(v) for v in cols.values() if np.ndim(v) > 0}
        n = lengths.pop() if lengths else 1
        if lengths:
            raise ValueError(f"columns of different lengths: {sorted(lengths | {n})}")
        if n == 0:
            return
        self.blocks.append({c: np.broadcast_to(np.asarray(cols[c]), (n,)) for c in self.columns})

    def frame(self) -> pd.DataFrame:
        import pandas as pd  # imported when first needed: start-up (session.preload)

        if not self.blocks:
            return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in self.columns})
        df = pd.DataFrame({c: np.concatenate([b[c] for b in self.blocks]) for c in self.columns})
        # rows in step order (stable: within a step, as added), whatever the chunk sizes
        df = df.sort_values("step", kind="stable", ignore_index=True)
        return df.astype({c: _dtype(c) for c in self.columns})

    def load(self, df: pd.DataFrame) -> None:
        self.blocks = [{c: df[c].to_numpy() for c in self.columns}] if len(df) else []


def _dtype(column: str) -> str:
    return {"step": "int64", "unit": "int64", "value": "float64"}.get(column, "str")


class RunRecord:
    """Writer of one run's record directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)  # made at the first write
        self.tables = {name: Table(cols) for name, cols in COLUMNS.items()}
        self.last: dict[str, float] = {}  # latest finite value of every scalar

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / CHECKPOINTS

    def scalars(self, step: Iterable[int] | int, name: str, value: Any) -> None:
        self.tables[SCALARS].add(step=step, name=name, value=value)
        finite = np.asarray(value, np.float64).reshape(-1)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            self.last[name] = float(finite[-1])

    def activations(self, steps: np.ndarray, stats: dict[str, dict[str, np.ndarray]]) -> None:
        """Add ``{'layer1/pre': {'p15': values over steps, 'u0/p15': ...}}`` rows."""
        t = self.tables[ACTIVATIONS]
        for site_name, per_stat in stats.items():
            layer, site = site_name.rsplit("/", 1)  # a/b/in: layer a/b, site in
            for key, values in per_stat.items():
                unit, stat = key.split("/") if "/" in key else ("u-1", key)
                t.add(
                    step=steps, layer=layer, site=site, unit=int(unit[1:]), stat=stat, value=values
                )

    def layers(self, steps: np.ndarray, stats: dict[str, dict[str, np.ndarray]]) -> None:
        t = self.tables[LAYERS]
        for layer, per_stat in stats.items():
            for stat, values in per_stat.items():
                t.add(step=steps, layer=layer, stat=stat, value=values)

    def ics(self, steps: np.ndarray, stats: dict[str, dict[str, np.ndarray]]) -> None:
        """Add ``{'layer1': {'grad_cos': values over steps}, 'all': {...}}`` rows."""
        t = self.tables[ICS]
        for layer, per_stat in stats.items():
            for stat, values in per_stat.items():
                t.add(step=steps, layer=layer, stat=stat, value=values)

    def write_tables(self) -> dict[str, pd.DataFrame]:
        """Write every table (atomically, one by one); returns the frames written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        frames = {}
        for name, table in self.tables.items():
            df = frames[name] = table.frame()
            _atomic_write(self.dir / name, lambda p, df=df: df.to_parquet(p, index=False))
        return frames

    def truncate(self, step: int) -> None:
        """Keep only rows up to ``step`` (after a resume from a checkpoint at ``step``)."""
        import pandas as pd

        for name, table in self.tables.items():
            path = self.dir / name
            if path.exists():
                df = pd.read_parquet(path)
                table.load(df[df["step"] <= step].reset_index(drop=True))
        scalars = self.tables[SCALARS].frame()
        scalars = scalars[np.isfinite(scalars["value"])]
        self.last = scalars.groupby("name", sort=False)["value"].last().to_dict()

    def write_summary(self, **summary: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            self.dir / SUMMARY,
            lambda p: p.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n"),
        )

    def read_summary(self) -> dict[str, Any] | None:
        path = self.dir / SUMMARY
        return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- rows
# A member's measurements (:meth:`bnlab.engine.chunk.Metrics.member`) as record rows: the one
# place that turns them into table rows, for a single run and every sweep member alike.


def map_stats(tree: dict, fn: Callable[[Any], Any]) -> dict:
    """Apply ``fn`` to every value array of a ``{name: {stat: values}}`` tree."""
    return {k: {s: fn(v) for s, v in d.items()} for k, d in tree.items()}


def activation_rows(
    rec: RunRecord, steps: np.ndarray, acts: dict, keep: np.ndarray | None = None
) -> None:
    """Rows of activation statistics at ``steps`` (where ``keep`` is true)."""
    keep = np.ones(steps.shape, bool) if keep is None else keep
    rec.activations(steps[keep].astype(np.int64), map_stats(acts, lambda v: np.asarray(v)[keep]))


def metrics_rows(rec: RunRecord, m: Any, keep: np.ndarray | None = None) -> None:
    """Rows of one member's measurements (a ``Metrics`` with the member axis dropped),
    at the probes where ``keep`` is true; activations where ``m.acts`` holds them."""
    keep = np.ones(m.step.shape, bool) if keep is None else keep
    steps = m.step[keep].astype(np.int64)
    if m.acts is not None:
        activation_rows(rec, m.step, m.acts, keep)
    rec.layers(steps, map_stats(m.layers, lambda v: v[keep]))
    if m.loss is not None:
        rec.scalars(steps, "train_loss", m.loss.mean(axis=1)[keep])
        if not np.isnan(m.acc).all():  # NaN: a task without classes (float targets)
            rec.scalars(steps, "train_accuracy", m.acc.mean(axis=1)[keep])
        rec.scalars(steps, "lr", m.lr[keep])
    if m.ics is not None:  # gradient-ICS / landscape probes, where they were due
        due = keep & m.ics_due.astype(bool)
        rec.ics(m.step[due].astype(np.int64), map_stats(m.ics, lambda v: v[due]))
    if m.sharpness is not None:  # the Hessian's top eigenvalue, where it was due
        due = keep & m.sharpness_due.astype(bool)
        rec.scalars(m.step[due].astype(np.int64), "sharpness", m.sharpness[due])
        rec.scalars(m.step[due].astype(np.int64), "two_over_lr", 2.0 / m.lr[due])


def eval_rows(rec: RunRecord, step: int, split: str, loss: Any, acc: Any) -> None:
    """The rows of an evaluation on ``split`` (``test_loss``, ``test_accuracy``...)."""
    rec.scalars(step, f"{split}_loss", float(loss))
    if not np.isnan(acc):  # NaN: a task without classes has no accuracy
        rec.scalars(step, f"{split}_accuracy", float(acc))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x)}")
