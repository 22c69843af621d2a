"""Read run records (see :mod:`bnlab.record`) back into pandas.

One run::

    run = load_run("outputs/2025-01-01/12-00-00")
    run.config["norm"]["name"], run.summary["status"], run.scalars, run.activations, run.layers
    run.ics            # gradient-ICS and landscape probes (empty unless probe.ics_every > 0)

A whole Hydra multirun (or a glob, or a list of run directories)::

    sweep = load_sweep("multirun/2025-01-01/12-00-00")
    sweep.runs         # one row per run: overrides, label, status, final accuracy, ...
    sweep.activations  # every run's rows, with ``run``, ``label`` and override columns

The override columns hold each run's command-line overrides (``norm``,
``optimizer.lr``, ``seed``...) parsed to Python values; where a run did not
override a key that another run did, the value comes from its resolved config
(``norm`` -> ``config['norm']['name']``). ``label`` names each run for legends
from the keys that differ between runs (``bn`` when only ``norm`` differs,
``norm=bn, optimizer.lr=0.5`` otherwise).

Missing or half-written runs (no ``summary.json``, status ``running`` or
``interrupted``, a missing or unreadable table) are kept with whatever they
hold, listed in ``Sweep.problems`` and announced with a warning, never dropped.

This module imports nothing of the trainer, and no matplotlib.
"""

from __future__ import annotations

import glob as _glob
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bnlab.record import ACTIVATIONS, COLUMNS, ICS, LAYERS, SCALARS, SUMMARY

__all__ = [
    "Run",
    "Sweep",
    "RunProblemWarning",
    "load_run",
    "load_sweep",
    "find_runs",
    "steps_to_target",
    "last_hidden_layer",
]

TABLES = {"scalars": SCALARS, "activations": ACTIVATIONS, "layers": LAYERS, "ics": ICS}
OPTIONAL = {ICS}  # tables older records lack (or that are empty by default): no problem if absent
# Keys always present in a sweep's ``runs`` table (from the config where not overridden).
STANDARD_KEYS = ("norm", "optimizer.lr", "seed", "data")


class RunProblemWarning(UserWarning):
    """Some runs of a sweep are missing pieces or did not finish."""


@dataclass
class Run:
    """One run record, as written by the trainer."""

    path: Path
    config: dict[str, Any]
    overrides: dict[str, Any]
    summary: dict[str, Any]
    scalars: pd.DataFrame
    activations: pd.DataFrame
    layers: pd.DataFrame
    ics: pd.DataFrame = field(default_factory=lambda: _empty(ICS))
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``finished``, ``diverged``, ``running``, ``interrupted``, or ``missing`` (no summary)."""
        return self.summary.get("status", "missing")

    @property
    def label(self) -> str:
        """A legend name: the norm variant as the config names it (``bn``, ``none``...)."""
        norm = config_value(self.config, "norm")
        return str(norm) if norm is not None else self.path.name

    def value(self, key: str) -> Any:
        """The value of a dotted key: the override if given, else from the config."""
        if key in self.overrides:
            return self.overrides[key]
        return config_value(self.config, key)

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, status={self.status!r}, overrides={self.overrides}, "
            f"scalars={len(self.scalars)} rows, activations={len(self.activations)} rows, "
            f"layers={len(self.layers)} rows)"
        )


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


# --------------------------------------------------------------------------- one run


def config_value(config: dict[str, Any], key: str) -> Any:
    """``config['a']['b']`` for ``key='a.b'``; a config group (dict with ``name``) gives its name."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return node.get("name")
    return node


def _parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """``['norm=bn', 'optimizer.lr=0.5']`` -> ``{'norm': 'bn', 'optimizer.lr': 0.5}``."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(lines))
        out = {}
        for o in parsed:
            if o.is_delete():
                continue
            v = o.value()
            out[o.key_or_group] = _plain(v)
        return out
    except Exception:  # not Hydra syntax: fall back to YAML values
        import yaml

        out = {}
        for line in lines:
            if "=" not in line or line.startswith("~"):
                continue
            k, v = line.split("=", 1)
            try:
                out[k.lstrip("+")] = _plain(yaml.safe_load(v))
            except yaml.YAMLError:
                out[k.lstrip("+")] = v
        return out


def _plain(v: Any) -> Any:
    """Scalars stay; anything else (lists, dicts, sweeps) becomes its text."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    conf = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except Exception:  # an interpolation that needs Hydra at runtime
        return OmegaConf.to_container(conf, resolve=False)


def _empty(table: str) -> pd.DataFrame:
    dtypes = {"step": "int64", "unit": "int64", "value": "float64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in COLUMNS[table]})


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a run directory (Hydra's ``.hydra/`` or any record file)."""
    p = Path(path)
    return p.is_dir() and (
        (p / ".hydra").is_dir()
        or (p / SUMMARY).exists()
        or any((p / t).exists() for t in TABLES.values())
    )


def load_run(path: str | os.PathLike) -> Run:
    """Load one run directory: config, overrides, summary and the tables (``ics`` optional).

    Missing pieces do not raise: a missing table loads as an empty DataFrame with
    the schema's columns, a missing summary as ``{}`` (status ``missing``), and each
    is listed in ``Run.problems``. Raises ``FileNotFoundError`` only when ``path``
    is not a run directory at all.
    """
    path = Path(path)
    if not is_run_dir(path):
        raise FileNotFoundError(
            f"{path} is not a run directory (no .hydra/, {SUMMARY} or tables); "
            "for a multirun use load_sweep"
        )
    problems: list[str] = []
    config: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    hydra_dir = path / ".hydra"
    if (hydra_dir / "config.yaml").exists():
        try:
            config = _read_yaml(hydra_dir / "config.yaml") or {}
        except Exception as e:
            problems.append(f"unreadable .hydra/config.yaml ({type(e).__name__}: {e})")
    else:
        problems.append("no .hydra/config.yaml")
    if (hydra_dir / "overrides.yaml").exists():
        try:
            lines = _read_yaml(hydra_dir / "overrides.yaml") or []
            overrides = _parse_overrides([str(x) for x in lines])
        except Exception as e:
            problems.append(f"unreadable .hydra/overrides.yaml ({type(e).__name__}: {e})")

    summary: dict[str, Any] = {}
    if (path / SUMMARY).exists():
        try:
            summary = json.loads((path / SUMMARY).read_text())
        except Exception as e:
            problems.append(f"unreadable {SUMMARY} ({type(e).__name__}: {e})")
    else:
        problems.append(f"no {SUMMARY} (crashed before its first record?)")
    status = summary.get("status")
    if status == "running":
        problems.append(
            f"status 'running' at step {summary.get('step')} of {summary.get('steps')} "
            "(killed, or still running)"
        )
    elif status == "interrupted":
        problems.append(f"interrupted at step {summary.get('step')} of {summary.get('steps')}")

    tables: dict[str, pd.DataFrame] = {}
    for attr, fname in TABLES.items():
        f = path / fname
        if not f.exists():
            if summary and fname not in OPTIONAL:  # no summary: already reported as missing
                problems.append(f"no {fname}")
            tables[attr] = _empty(fname)
            continue
        try:
            df = pd.read_parquet(f)
        except Exception as e:
            problems.append(f"unreadable {fname} ({type(e).__name__}: {e})")
            tables[attr] = _empty(fname)
            continue
        missing = [c for c in COLUMNS[fname] if c not in df.columns]
        if missing:
            problems.append(f"{fname} lacks columns {missing}")
            tables[attr] = _empty(fname)
            continue
        tables[attr] = df
    return Run(path, config, overrides, summary, problems=problems, **tables)


# --------------------------------------------------------------------------- many runs


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def find_runs(path: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The run directories in a multirun directory, a glob pattern, or a list of those.

    A directory that is itself a run is one run; otherwise it is searched
    (recursively, not into runs) for run directories. Sorted naturally (2 < 10).
    """
    if isinstance(path, str | os.PathLike):
        items = [path]
    else:
        items = list(path)
    found: list[Path] = []
    for item in items:
        s = os.fspath(item)
        matches = sorted(_glob.glob(s)) if _glob.has_magic(s) else [s]
        if not matches:
            raise FileNotFoundError(f"no directory matches {s!r}")
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise FileNotFoundError(f"{p} does not exist")
            if is_run_dir(p):
                found.append(p)
                continue
            here = []
            for root, dirs, _ in os.walk(p):
                if is_run_dir(root):
                    here.append(Path(root))
                    dirs[:] = []
                else:
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(sorted(here, key=_natural_key))
    seen: set[Path] = set()
    unique = []
    for p in found:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    return unique


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


def _labels(values: list[dict[str, Any]], varying: list[str], members: list[Run]) -> list[str]:
    if varying == ["norm"]:
        labels = [_fmt(v["norm"]) for v in values]
    elif varying:
        labels = [", ".join(f"{k}={_fmt(v[k])}" for k in varying) for v in values]
    else:
        labels = [m.label for m in members]
    if len(set(labels)) < len(labels):  # identical runs: tell them apart by their path
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
    runs concatenated with ``run``, the override columns and ``label`` in front.
    Runs with problems are kept, listed in ``Sweep.problems`` and (``warn=True``)
    announced with a :class:`RunProblemWarning`.
    """
    paths = find_runs(path)
    if not paths:
        raise FileNotFoundError(f"no run directories under {path}")
    members = [load_run(p) for p in paths]
    ids = _run_ids(paths)

    keys: list[str] = []
    for m in members:
        keys += [k for k in m.overrides if k not in keys]
    # a key one run overrides may be a list in another's config (model.channels: []): text
    values = [{k: _plain(m.value(k)) for k in keys} for m in members]
    varying = [k for k in keys if len({repr(v[k]) for v in values}) > 1]
    labels = _labels(values, varying, members)

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

    front = ["run", *keys, "label"]
    tables = {}
    for attr, fname in TABLES.items():
        parts = []
        for m, rid, v, lab in zip(members, ids, values, labels, strict=True):
            df = getattr(m, attr)
            if not len(df):
                continue
            df = df.copy()
            df.insert(0, "run", rid)
            for i, k in enumerate(keys, 1):
                df.insert(i, k, v[k])
            df.insert(len(keys) + 1, "label", lab)
            parts.append(df)
        if parts:
            t = pd.concat(parts, ignore_index=True)
        else:
            t = _empty(fname)
            for i, c in enumerate(front):
                t.insert(i, c, pd.Series(dtype="object"))
        for k in keys:
            t[k] = _column(list(t[k])) if len(t) else t[k]
        tables[attr] = t

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


def layer_order(names: Iterable[str]) -> list[str]:
    """Layer names in network order (``layer2`` before ``layer10``)."""
    return sorted(set(names), key=_natural_key_str)


def _natural_key_str(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]
