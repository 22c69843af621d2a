"""The loggers' shared interface: a :class:`Sink` per member and backend, and the record's
rows turned into tagged scalars per step (``acts/<layer>/<site>/<stat>``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnlab.record.tables import ACTIVATIONS, ICS, LAYERS, SCALARS

# overrides that do not change results (bnlab.record.guard.FREE) and the loggers' own:
# left out of a run's name and hparams
UNNAMED = ("progress", "figure", "resume", "compile_cache", "chunk_steps", "checkpoint_every",
           "data.dir", "data.data_dir", "data.download", "parallel", "probe.overlap",
           "step_loop", "import_path", "logger", "hydra", "objective")  # fmt: skip


def run_overrides(overrides: list[str]) -> dict[str, str]:
    """A run's command-line overrides that change its results, ``{key: value}``."""
    out = {}
    for o in overrides:
        key, eq, value = str(o).partition("=")
        key = key.lstrip("+~")
        if eq and not any(key == k or key.startswith(k + ".") for k in UNNAMED):
            out[key] = value
    return out


def run_name(overrides: dict[str, str], default: str) -> str:
    """The name a logger gives a run: its overrides, the last part of each key
    (``norm=bn,lr=0.1,seed=0``); ``default`` (the run directory's name) without any."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()) or default


PREFIX = {ACTIVATIONS: "acts", LAYERS: "layers", ICS: "ics"}

# --------------------------------------------------------------------------- rows and sinks


def _tag(table: str, row: dict[str, Any]) -> str:
    if table == SCALARS:
        return str(row["name"])
    if table == ACTIVATIONS:
        unit = int(row["unit"])
        sub = f"u{unit}/" if unit >= 0 else ""
        return f"acts/{row['layer']}/{row['site']}/{sub}{row['stat']}"
    return f"{PREFIX[table]}/{row['layer']}/{row['stat']}"


def tagged(table: str, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A block of a record table as ``(steps, tags, values)``, one tag per row. A
    block whose labels are one value repeated (as the host loop adds them) is tagged
    once."""
    steps, values = np.asarray(cols["step"]), np.asarray(cols["value"], np.float64)
    labels = {c: np.asarray(v) for c, v in cols.items() if c not in ("step", "value")}
    n = len(steps)
    if n and all(v.strides == (0,) or (v == v[0]).all() for v in labels.values()):
        return steps, [_tag(table, {c: v[0] for c, v in labels.items()})] * n, values
    return steps, [_tag(table, {c: v[i] for c, v in labels.items()}) for i in range(n)], values


def by_step(rows: list[tuple[np.ndarray, list[str], np.ndarray]]) -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` of tagged blocks (steps in order)."""
    out: dict[int, dict[str, float]] = {}
    for steps, tags, values in rows:
        for s, t, v in zip(steps.tolist(), tags, values.tolist(), strict=True):
            out.setdefault(int(s), {})[t] = v
    return dict(sorted(out.items()))


def edges(h: dict[str, Any]) -> np.ndarray:
    """The right edges of a :func:`bnlab.measure.histogram`'s buckets."""
    lo, hi, bins = float(h["min"]), float(h["max"]), len(h["counts"])
    width = hi - lo if hi > lo else 1.0
    return lo + width * np.arange(1, bins + 1) / bins


class Sink:
    """One logger of one member: takes new record rows, histograms, and a last word."""

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        """One new column block of ``table`` (only rows after the start)."""

    def histograms(self, step: int, hists: dict[str, dict[str, Any]]) -> None:
        """``{site: probe.histogram}`` (host arrays) at ``step``."""

    def flush(self) -> None:
        """The chunk's rows are all in."""

    def close(self, summary: dict[str, Any]) -> None:
        """The member is done (``summary`` as in its ``summary.json``)."""


STATUS_EXIT = {"finished": 0, "diverged": 1, "interrupted": 130}
