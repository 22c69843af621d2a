"""The pieces the figures of :mod:`bnlab.analysis.plot` share (internal; use :mod:`bnlab.analysis.plot`).

A canvas without pyplot state, a colour per run or configuration, legends below the
panels, step axes, and :func:`curve`: one configuration's curve, which is its run's
line when it has one run, and the mean over its runs (seeds) with a shaded interval
(:func:`bnlab.analysis.stats.aggregate`) when it has several.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bnlab.analysis.stats import aggregate, methods_label, parse_errorbar

STEP_LABEL = "training step"
PANEL = (3.8, 2.9)  # inches per panel
DPI = 120
UNITS = "run"  # the replicate column: one run (one seed) per value
BAND_ALPHA = 0.2
PCT = re.compile(r"^p(\d+(?:\.\d+)?)$")
LONG_NAMES = {
    "optimizer.lr": "optimizer.lr (learning rate)",
    "test_accuracy": "test accuracy",
    "train_accuracy": "train accuracy",
    "train_loss": "train loss",
    "test_loss": "test loss",
}
FAMILIES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd")


def figure(nrows: int, ncols: int, *, sharex=True, sharey=False, size=PANEL, extra_h=0.0):
    fig = Figure(
        figsize=(size[0] * ncols, size[1] * nrows + extra_h), layout="constrained", dpi=DPI
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def groups(df: pd.DataFrame, by: str | None) -> list[tuple[str | None, pd.DataFrame]]:
    """``(label, rows)`` per run or configuration in order of appearance; one unnamed
    group without ``by``. A group may hold several runs (seeds): see :func:`curve`."""
    if by and by in df.columns:
        return [(str(k), g) for k, g in df.groupby(by, sort=False)]
    return [(None, df)]


def n_runs(rows: pd.DataFrame) -> int:
    """How many runs (replicates) ``rows`` hold: distinct ``run`` values, else 1."""
    return int(rows[UNITS].nunique()) if UNITS in rows.columns and len(rows) else 1


def colors(labels: Sequence[str | None], families: Sequence[str] | None = None) -> dict:
    """A colour per label: C0, C1... for up to 10 runs; for more, one colour family per
    ``families`` value (the norm variant), shades within it in order of appearance."""
    labels = list(labels)
    if families is not None and len(labels) > 10:
        fams = list(dict.fromkeys(families))
        if len(fams) <= len(FAMILIES):
            out = {}
            for f_i, fam in enumerate(fams):
                members = [lab for lab, f in zip(labels, families, strict=True) if f == fam]
                cmap = matplotlib.colormaps[FAMILIES[f_i]]
                shades = np.linspace(0.45, 0.95, len(members)) if len(members) > 1 else [0.75]
                out.update({lab: cmap(float(t)) for lab, t in zip(members, shades, strict=True)})
            return out
    if len(labels) <= 10:
        return {lab: f"C{i}" for i, lab in enumerate(labels)}
    cmap = matplotlib.colormaps["viridis"]
    shades = np.linspace(0, 0.95, len(labels))
    return {lab: cmap(float(t)) for lab, t in zip(labels, shades, strict=True)}


def run_colors(grouped: list[tuple[str | None, pd.DataFrame]], family: str = "norm") -> dict:
    labels = [lab for lab, _ in grouped]
    if all(family in g.columns and len(g) for _, g in grouped):
        return colors(labels, [str(g[family].iloc[0]) for _, g in grouped])
    return colors(labels)


def wrap(text: str, width: int = 42) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def legend_ncols(fig: Figure, labels: Sequence[str], fontsize: float = 9.0) -> int:
    """As many columns as fit the figure's width (about 0.6 em per character)."""
    width_pt = fig.get_figwidth() * 72
    per = max(len(str(lab)) for lab in labels) * 0.6 * fontsize + 40
    return max(1, min(len(labels), int(width_pt // per)))


def legend_below(fig: Figure, handles: list, labels: list[str], **kw) -> None:
    if not labels:
        return
    ncols = legend_ncols(fig, labels)
    rows = math.ceil(len(labels) / ncols) + (1 if kw.get("title") else 0)
    fig.set_figheight(fig.get_figheight() + 0.2 * rows + 0.1)  # room below the panels
    fig.legend(
        handles, labels, loc="outside lower center", ncols=ncols, frameon=False, fontsize=9,
        handler_map={tuple: HandlerTuple(ndivide=1)}, **kw,
    )  # fmt: skip


class Bands:
    """What :func:`curve` drew per label: the runs behind it and the intervals used."""

    def __init__(self, errorbar: Any):
        self.spec = parse_errorbar(errorbar)
        self.n: dict[str | None, int] = {}
        self.methods: dict[str | None, list[str]] = {}

    def add(self, label: str | None, n: int, methods: Sequence[str]) -> None:
        self.n[label] = max(self.n.get(label, 0), n)
        self.methods.setdefault(label, []).extend(methods)

    def text(self, label: str | None) -> str:
        """``bn (n=5, 95% t)`` for a mean over runs; the label alone for one run."""
        n = self.n.get(label, 1)
        if n <= 1:
            return str(label)
        level = self.spec[1] if self.spec else None
        how = methods_label(self.methods.get(label, []), level) or "mean"
        return f"{label} (n={n}, {how})"

    def handle(self, label: str | None, color: Any, **line_kw) -> Any:
        line = Line2D([], [], color=color, **line_kw)
        if self.n.get(label, 1) > 1 and self.spec is not None:
            return (Patch(color=color, alpha=BAND_ALPHA, lw=0), line)
        return line


def run_legend(
    fig: Figure, grouped: list[tuple[str | None, pd.DataFrame]], cmap: dict, bands: Bands
) -> None:
    """One legend entry per labelled run or configuration, in its colour, below the
    panels; a configuration of several runs says n and its interval."""
    present = [lab for lab, _ in grouped if lab is not None]
    handles = [bands.handle(lab, cmap[lab]) for lab in present]
    legend_below(fig, handles, [bands.text(lab) for lab in present])


def curve(
    ax: Axes,
    rows: pd.DataFrame,
    *,
    errorbar: Any,
    x: str = "step",
    y: str = "value",
    smooth: int = 1,
    band: bool = True,
    **line_kw,
) -> tuple[int, list[str]]:
    """Draw one run's or one configuration's ``y`` over ``x``; return ``(n, methods)``.

    One run (one ``run`` value): its line, as always (``smooth`` > 1: a centred
    rolling median over that many points, the raw points faint behind it). Several
    runs (seeds): the mean over them at each ``x`` and, unless ``errorbar`` is None
    or ``band=False``, the interval of :func:`bnlab.analysis.stats.aggregate` shaded around it
    (each run smoothed first). ``methods`` are the intervals used (``t``, ``min-max``...).
    """
    rows = rows.sort_values(x, kind="stable")
    n = n_runs(rows)
    if n <= 1:
        v = rows[y].astype(float)
        if smooth > 1:
            ax.plot(rows[x], v, color=line_kw.get("color"), lw=0.5, alpha=0.25)
            v = v.rolling(smooth, center=True, min_periods=1).median()
        ax.plot(rows[x], v, **marker(len(rows)), **line_kw)
        return 1, []
    if smooth > 1:
        roll = rows.groupby(UNITS, sort=False)[y].transform(
            lambda s: s.astype(float).rolling(smooth, center=True, min_periods=1).median()
        )
        rows = rows.assign(**{y: roll})
    agg = aggregate(rows, y, [x], units=UNITS, errorbar=errorbar)
    agg = agg[agg["n"] > 0]
    ax.plot(agg[x], agg["mean"], **marker(len(agg)), **line_kw)
    if band and errorbar is not None and agg["hi"].notna().any():
        ax.fill_between(
            agg[x].to_numpy(float), agg["lo"].to_numpy(float), agg["hi"].to_numpy(float),
            color=line_kw.get("color"), alpha=BAND_ALPHA, linewidth=0,
        )  # fmt: skip
    return n, list(agg["method"].unique())


def suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width."""
    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * 11)))
    lines = [w for part in text.split("\n") for w in (textwrap.wrap(part, width) or [""])]
    fig.suptitle("\n".join(lines), fontsize=11)


def percentile_stats(stats) -> list[str]:
    found = [(float(m.group(1)), s) for s in stats if (m := PCT.match(str(s)))]
    return [s for _, s in sorted(found)]


def require(df: pd.DataFrame, what: str) -> None:
    if not len(df):
        raise ValueError(f"no rows to plot: {what}")


def step_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(step_label))
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", color="grey")


def step_label(v: float, _pos=None) -> str:
    """Whole steps only; thousands as ``10k`` so that long runs' ticks stay short."""
    if abs(v - round(v)) > 1e-6:
        return ""
    v = round(v)
    return f"{v / 1000:g}k" if abs(v) >= 1000 and v % 100 == 0 else f"{v:,}"


def log_minor_label(v: float, _pos=None) -> str:
    """Label the 2s and 5s between decades of a log axis, plainly (0.2, 0.5, 2, 5)."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def marker(n: int) -> dict:
    """Dots on the line where there are few points (a run that stopped early)."""
    return {"marker": "o", "markersize": 3} if n <= 30 else {}
