"""Read run records (see :mod:`bnlab.record.tables`) back into pandas.

One run (:mod:`bnlab.record.rundir`, re-exported here)::

    run = load_run("outputs/2025-01-01/12-00-00")
    run.config["norm"]["name"], run.summary["status"], run.scalars, run.activations, run.layers

A whole Hydra multirun (or a vectorized sweep, a glob, a list of run directories)::

    sweep = load_sweep("multirun/2025-01-01/12-00-00")
    sweep.runs         # one row per run: overrides, seed, label, status, final accuracy, ...
    sweep.activations  # every run's rows, with ``run``, override, ``label`` and ``seed`` columns
    sweep.aggregate()  # final test accuracy per configuration: mean over seeds, interval, n

The override columns hold each run's command-line overrides (``norm``,
``optimizer.lr``, ``seed``...) parsed to Python values; where a run did not
override a key that another run did, the value comes from its resolved config
(``norm`` -> ``config['norm']['name']``). ``seed`` is a column of ``runs`` and of
every table (the override, else the resolved config's ``seed``): seeds are the
replicate axis. ``label`` names each *configuration* for legends from the keys
other than ``seed`` that differ between runs (``bn`` when only ``norm`` differs,
``norm=bn, optimizer.lr=0.5`` otherwise); runs that differ only by their seed share
a label, and the figures of :mod:`bnlab.analysis.plot` draw their mean with a band.
:func:`bnlab.analysis.stats.aggregate` (also here as :func:`aggregate`) gives the means and
intervals as a table.

Missing or half-written runs (no ``summary.json``, status ``running`` or
``interrupted``, a missing or unreadable table) are kept with whatever they
hold, listed in ``Sweep.problems`` and announced with a warning, never dropped.

:func:`demo_sweep` trains a small sweep for a notebook through the command line
(``python -m bnlab.train -m ...`` in a subprocess). This module imports nothing of
the trainer, and no matplotlib.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bnlab.analysis.demo import DEMO_MARK, demo_sweep  # noqa: F401  (re-exported)
from bnlab.analysis.stats import aggregate, format_interval
from bnlab.record.rundir import (
    TABLES,
    Run,
    RunProblemWarning,
    _empty,
    _plain,
    config_value,
    find_runs,
    is_run_dir,
    load_run,
)
from bnlab.record.tables import ICS

__all__ = [
    "Run",
    "Sweep",
    "RunProblemWarning",
    "load_run",
    "load_sweep",
    "find_runs",
    "is_run_dir",
    "config_value",
    "steps_to_target",
    "last_hidden_layer",
    "layer_order",
    "network_order",
    "aggregate",
    "format_interval",
    "demo_sweep",
]

# Keys always present in a sweep's ``runs`` table (from the config where not overridden).
STANDARD_KEYS = ("norm", "optimizer.lr", "seed", "data")
SEED = "seed"  # the replicate axis


@dataclass
class Sweep:
    """Several runs; tables concatenated with ``run``, ``label`` and override columns."""

    members: list[Run]
    runs: pd.DataFrame
    scalars: pd.DataFrame
    activations: pd.DataFrame
    layers: pd.DataFrame
    keys: list[str]  # override columns, in the order first seen
    varying: list[str]  # the keys whose values differ between runs
    ics: pd.DataFrame = field(default_factory=lambda: _empty(ICS))
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def __repr__(self) -> str:
        return (
            f"Sweep({len(self.members)} runs, varying={self.varying}, "
            f"problems={len(self.problems)})"
        )

    @property
    def settings(self) -> list[str]:
        """The varying keys that name a configuration: all but ``seed``."""
        return [k for k in self.varying if k != SEED]

    def aggregate(
        self,
        value: str = "final_test_accuracy",
        by: str | Sequence[str] | None = None,
        *,
        errorbar: Any = ("ci", 95),
        diverged: bool = False,
    ) -> pd.DataFrame:
        """``value`` of :attr:`runs` per configuration: mean over seeds, interval, n.

        ``by`` defaults to :attr:`settings` (``label`` when only seeds vary); the
        output has the ``by`` columns, ``label``, then those of
        :func:`bnlab.analysis.stats.aggregate`, ``diverged`` and ``text``. The
        interval is :func:`bnlab.analysis.stats.aggregate`'s (a 95% t interval with 5 seeds or
        more, else min-max; the ``method`` column says which); ``text`` is the row
        as :func:`bnlab.analysis.stats.format_interval` writes it. Diverged runs' values (their
        last finite value) are left out unless ``diverged=True``; the ``diverged``
        column counts them.
        """
        by = [by] if isinstance(by, str) else list(by or self.settings or ["label"])
        runs = self.runs
        div = runs["status"].eq("diverged")
        kept = runs if diverged else runs.assign(**{value: runs[value].where(~div)})
        out = aggregate(kept, value, by, errorbar=errorbar)
        per = runs.assign(_d=div).groupby(by, sort=False, dropna=False)
        where = pd.MultiIndex.from_frame(out[by])
        if "label" not in by:  # the legend name of each configuration, after its keys
            out.insert(len(by), "label", per["label"].first().reindex(where).to_numpy())
        out["diverged"] = per["_d"].sum().reindex(where).to_numpy().astype("int64")
        out["text"] = [format_interval(r) for _, r in out.iterrows()]
        return out


# --------------------------------------------------------------------------- many runs


def _run_ids(paths: list[Path]) -> list[str]:
    """Short unique ids: the job dir name (``0``, ``1``...) or paths from a common root."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    return [str(r.relative_to(root)) for r in resolved]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _labels(
    values: list[dict[str, Any]], varying: list[str], members: list[Run], seeds: list[Any]
) -> list[str]:
    """A label per configuration: the varying keys but the seed (runs that differ only
    by their seed share it); exact duplicates (same label and seed) get their path."""
    varying = [k for k in varying if k != SEED]
    if varying == ["norm"]:
        labels = [_fmt(v["norm"]) for v in values]
    elif varying:
        labels = [", ".join(f"{k}={_fmt(v[k])}" for k in varying) for v in values]
    else:
        labels = [m.label for m in members]
    pairs = [(lab, repr(s)) for lab, s in zip(labels, seeds, strict=True)]
    if len(set(pairs)) < len(pairs):  # identical runs: tell them apart by their path
        ids = _run_ids([m.path for m in members])
        labels = [f"{lab} [{i}]" for lab, i in zip(labels, ids, strict=True)]
    return labels


def _column(values: list[Any]) -> pd.Series:
    s = pd.Series(values, dtype="object")
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(s)
    return s


def load_sweep(
    path: str | os.PathLike | Iterable[str | os.PathLike], *, warn: bool = True
) -> Sweep:
    """Load every run of a Hydra multirun directory (or a glob, or a list of run dirs).

    Returns a :class:`Sweep`: ``runs`` (one row per run: ``run``, ``path``, the
    override columns, ``label``, ``status``, ``step``, ``steps``, ``diverged_at``,
    ``final_<scalar>`` for every final scalar, ``steps_per_sec``, ``wall_time_s``,
    ``problems``) and the ``scalars``, ``activations``, ``layers`` and ``ics`` tables of all
    runs concatenated with ``run``, the override columns, ``label`` and ``seed`` in
    front. ``seed`` is in ``runs`` and in every table, from the override or else the
    resolved config (it is among the override columns where a run overrides it).
    Runs with problems are kept, listed in ``Sweep.problems`` and (``warn=True``)
    announced with one :class:`RunProblemWarning`.
    """
    paths = find_runs(path)
    if not paths:
        raise FileNotFoundError(f"no run directories under {path}")
    members = [load_run(p, warn=False) for p in paths]
    ids = _run_ids(paths)

    keys: list[str] = []
    for m in members:
        keys += [k for k in m.overrides if k not in keys]
    # a key one run overrides may be a list in another's config (model.channels: []): text
    values = [{k: _plain(m.value(k)) for k in keys} for m in members]
    varying = [k for k in keys if len({repr(v[k]) for v in values}) > 1]
    seeds = [_plain(m.value(SEED)) for m in members]
    labels = _labels(values, varying, members, seeds)

    rows = []
    for m, rid, v, lab in zip(members, ids, values, labels, strict=True):
        s = m.summary
        row: dict[str, Any] = {"run": rid, "path": str(m.path), **v}
        for k in STANDARD_KEYS:
            if k not in row:
                row[k] = m.value(k)
        row.update(
            label=lab,
            status=m.status,
            step=s.get("step"),
            steps=s.get("steps"),
            diverged_at=s.get("diverged_at"),
            diverge_reason=s.get("diverge_reason"),
        )
        for name, val in (s.get("final") or {}).items():
            row[f"final_{name}"] = val
        row.update(
            steps_per_sec=s.get("steps_per_sec"),
            wall_time_s=s.get("wall_time_s"),
            problems="; ".join(m.problems),
        )
        rows.append(row)
    runs = pd.DataFrame(rows)
    for k in [*keys, *STANDARD_KEYS]:
        if k in runs.columns:
            runs[k] = _column(list(runs[k]))
    for c in ("step", "steps", "diverged_at"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce").astype("Int64")

    extra = [] if SEED in keys else [SEED]  # the seed column where no run overrides it
    front = ["run", *keys, "label", *extra]
    tables = {}
    for attr, fname in TABLES.items():
        parts = []
        for m, rid, v, lab, seed in zip(members, ids, values, labels, seeds, strict=True):
            df = getattr(m, attr)
            if not len(df):
                continue
            df = df.copy()
            df.insert(0, "run", rid)
            for i, k in enumerate(keys, 1):
                df.insert(i, k, v[k])
            df.insert(len(keys) + 1, "label", lab)
            if extra:
                df.insert(len(keys) + 2, SEED, seed)
            parts.append(df)
        if parts:
            t = pd.concat(parts, ignore_index=True)
        else:
            t = _empty(fname)
            for i, c in enumerate(front):
                t.insert(i, c, pd.Series(dtype="object"))
        for k in [*keys, *extra]:
            t[k] = _column(list(t[k])) if len(t) else t[k]
        tables[attr] = t

    order = network_order(m.summary or {} for m in members)
    for t in tables.values():
        t.attrs["layer_order"] = order
    problems = [f"{rid}: {p}" for m, rid in zip(members, ids, strict=True) for p in m.problems]
    if problems and warn:
        warnings.warn(
            f"{len({p.split(':', 1)[0] for p in problems})} of {len(members)} runs "
            "are incomplete (kept, see Sweep.problems):\n  " + "\n  ".join(problems),
            RunProblemWarning,
            stacklevel=2,
        )
    return Sweep(members, runs, keys=keys, varying=varying, problems=problems, **tables)


# --------------------------------------------------------------------------- helpers


def steps_to_target(
    scalars: pd.DataFrame, target: float, *, metric: str = "test_accuracy", by: str = "run"
) -> pd.Series:
    """Per run (``by``), the first step at which ``metric`` reaches ``target`` (NaN if never)."""
    df = scalars[scalars["name"] == metric]
    groups = df.groupby(by, sort=False) if by in df.columns else [(None, df)]
    out = {}
    for key, g in groups:
        hit = g.loc[g["value"] >= target, "step"]
        out[key] = float(hit.min()) if len(hit) else math.nan
    return pd.Series(out, name=f"steps_to_{metric}_{target:g}", dtype="float64")


def last_hidden_layer(table: pd.DataFrame) -> str | None:
    """The highest-numbered ``layer{i}`` in a table's ``layer`` column."""
    if "layer" not in table.columns or not len(table):
        return None
    names = table["layer"].dropna().unique()
    return max(names, key=_natural_key_str) if len(names) else None


def layer_order(names: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
    """Layer names in network order: ``order`` (:func:`network_order`, what the run
    recorded) where it names them, the rest after them by name (``layer2`` before
    ``layer10``)."""
    known = {n: i for i, n in enumerate(order or [])}
    return sorted(set(names), key=lambda n: (n not in known, known.get(n, 0), _natural_key_str(n)))


def network_order(summaries: Iterable[dict[str, Any]]) -> list[str] | None:
    """The layers in the order the runs' models call them (``summary.json``'s
    ``sites``, in call order); None for records without it. The tables of
    :func:`load_sweep` carry it as ``attrs["layer_order"]`` for the figures."""
    order: list[str] = []
    for s in summaries:
        for site in s.get("sites") or []:
            layer = str(site).rsplit("/", 1)[0]
            if layer not in order:
                order.append(layer)
    return order or None


def _natural_key_str(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]
