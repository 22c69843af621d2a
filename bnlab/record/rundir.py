"""One run directory (see :mod:`bnlab.record.tables`) back into pandas: :func:`load_run`.

::

    run = load_run("outputs/2025-01-01/12-00-00")
    run.config["norm"]["name"], run.summary["status"], run.scalars, run.activations, run.layers
    run.ics            # gradient-ICS and landscape probes (empty unless probe.ics_every > 0)
    run.value("seed")  # a dotted key: the command-line override, else the resolved config

:func:`find_runs` finds the run directories under a multirun directory or a glob;
:mod:`bnlab.analysis.runs` loads many of them as one sweep (and re-exports all of this).

A missing or half-written piece (no ``summary.json``, status ``running`` or
``interrupted``, a missing, truncated or unreadable table) never raises: the run
keeps whatever it holds, lists the piece in ``Run.problems`` and announces it with a
:class:`RunProblemWarning`.

This module imports nothing of the trainer, and no matplotlib.
"""

from __future__ import annotations

import glob as _glob
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bnlab.record.tables import ACTIVATIONS, COLUMNS, ICS, LAYERS, SCALARS, SUMMARY

__all__ = [
    "Run",
    "RunProblemWarning",
    "load_run",
    "find_runs",
    "is_run_dir",
    "config_value",
]

TABLES = {"scalars": SCALARS, "activations": ACTIVATIONS, "layers": LAYERS, "ics": ICS}
OPTIONAL = {ICS}  # tables older records lack (or that are empty by default): no problem if absent


class RunProblemWarning(UserWarning):
    """A run is missing pieces, holds a damaged table, or did not finish."""


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


def load_run(path: str | os.PathLike, *, warn: bool = True) -> Run:
    """Load one run directory: config, overrides, summary and the tables (``ics`` optional).

    Missing pieces do not raise: a missing, truncated or unreadable table loads as an
    empty DataFrame with the schema's columns, a missing summary as ``{}`` (status
    ``missing``); each is listed in ``Run.problems`` and (``warn=True``) announced
    with one :class:`RunProblemWarning`. Raises ``FileNotFoundError`` only when
    ``path`` is not a run directory at all.
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
    if problems and warn:
        warnings.warn(
            f"run {path} is incomplete (loaded what it holds, see Run.problems):\n  "
            + "\n  ".join(problems),
            RunProblemWarning,
            stacklevel=2,
        )
    return Run(path, config, overrides, summary, problems=problems, **tables)


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
