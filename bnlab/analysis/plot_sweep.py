"""The sweep summary figure: a final metric versus a swept value, one line per variant.

Part of :mod:`bnlab.analysis.plot` (which re-exports :func:`sweep_summary`); it reads the
``runs`` table of :func:`bnlab.analysis.runs.load_sweep`, one row per run.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import offset_copy

from bnlab.analysis.plotkit import (
    LONG_NAMES,
    STEP_LABEL,
    colors,
    figure,
    legend_below,
    require,
    suptitle,
)
from bnlab.analysis.runs import steps_to_target
from bnlab.analysis.stats import ERRORBAR, aggregate, describe

__all__ = ["sweep_summary"]


def sweep_summary(
    runs: pd.DataFrame,
    scalars: pd.DataFrame | None = None,
    *,
    x: str = "optimizer.lr",
    hue: str = "norm",
    metric: str = "final_test_accuracy",
    target: float | None = None,
    errorbar: Any = ERRORBAR,
    select: str = "final_val_accuracy",
    title: str | None = None,
) -> Figure:
    """Final test accuracy versus ``x`` (the learning rate), one line per ``hue`` (norm variant).

    ``runs`` is :attr:`bnlab.analysis.runs.Sweep.runs`. Lines join the mean over the runs at
    each ``x`` that did not diverge; where several runs (seeds) share a point, a
    vertical bar shows their ``errorbar`` interval (:func:`bnlab.analysis.stats.aggregate`:
    by default a 95% t interval of the mean with 5 seeds or more, min-max with
    fewer) and the legend says n. Diverged runs are marked with an X at their last
    finite value. With ``target`` (and ``scalars``) a second panel shows the first
    step at which test accuracy reached ``target`` (mean and bars over the runs that
    reached it); runs that never did are marked (^) along the top. Axes: 1, or 2 with
    ``target``; lines: one per ``hue`` value in each. Where the runs have ``select``
    (a validation split: ``data.validation``), a star marks each variant's best ``x``
    by its mean there: the choice is made on validation, the test split only reports.
    """
    require(runs, "runs")
    if x not in runs.columns:
        raise ValueError(f"runs has no column {x!r}; columns: {list(runs.columns)}")
    runs = runs.copy()
    if hue not in runs.columns:
        runs[hue] = "all runs"
    missing = runs[runs[x].isna()]
    if len(missing):  # e.g. runs of another sweep, plotted together: said, never silent
        ids = ", ".join(str(r) for r in missing.get("run", missing.index))
        warnings.warn(
            f"sweep_summary: {len(missing)} of {len(runs)} runs have no {x} and are not "
            f"drawn ({ids}); choose x= a key every run has",
            stacklevel=2,
        )
    total = len(runs)
    runs = runs[runs[x].notna()]
    runs["_x"] = pd.to_numeric(runs[x], errors="coerce")
    if runs["_x"].isna().any():
        raise ValueError(f"column {x!r} is not numeric")
    diverged = (runs["status"] == "diverged") if "status" in runs.columns else False
    runs["_div"] = diverged
    panels = [(metric, None)]
    if target is not None:
        if scalars is None:
            raise ValueError("target needs the scalars table")
        reach = steps_to_target(scalars, target, by="run")
        runs["_reach"] = runs["run"].map(reach).astype("float64")
        panels.append(("_reach", target))
    fig, axes = figure(1, len(panels), sharex=True, size=(4.8, 3.6))
    hues = list(dict.fromkeys(runs[hue].astype(str)))
    cmap = colors(hues)
    xs = np.sort(runs["_x"].unique())
    logx = xs.min() > 0 and xs.max() / xs.min() >= 10
    seeds: dict[str, list[int]] = {h: [] for h in hues}  # runs behind each point
    best = False
    for ax, (col, tgt) in zip(axes[0], panels, strict=True):
        for k, h in enumerate(hues):
            # dodge the variants sideways by a few points so equal values stay visible
            dx = (k - (len(hues) - 1) / 2) * 4.0
            # (set after adding, so that autoscaling sees the plain data coordinates)
            data_t = offset_copy(ax.transData, fig=fig, x=dx, units="points")
            top_t = offset_copy(ax.get_xaxis_transform(), fig=fig, x=dx, units="points")
            g = runs[runs[hue].astype(str) == h]
            ok = g[~g["_div"]]
            if col == "_reach":
                ok = g[g["_reach"].notna()]
            agg = aggregate(ok, col, "_x", errorbar=errorbar).sort_values("_x")
            agg = agg[agg["n"] > 0]
            (ln,) = ax.plot(
                agg["_x"], agg["mean"].to_numpy(), color=cmap[h], marker="o", label=h, lw=1.5
            )  # fmt: skip
            ln.set_transform(data_t)
            if errorbar is not None and (agg["n"] > 1).any():
                several = agg[agg["n"] > 1]
                bars = ax.vlines(several["_x"], several["lo"], several["hi"], color=cmap[h], lw=1.5)
                bars.set_transform(data_t)
            if col != "_reach" and select in g.columns and len(agg):
                # the best x by the mean validation accuracy (test is only reported)
                by = aggregate(ok, select, "_x", errorbar=None).dropna(subset=["mean"])
                if len(by):
                    bx = by.loc[by["mean"].idxmax(), "_x"]
                    at = agg[agg["_x"] == bx]
                    if len(at):
                        st = ax.scatter(at["_x"], at["mean"], marker="*", s=220, color=cmap[h],
                                        edgecolor="black", linewidth=0.6, zorder=4)  # fmt: skip
                        st.set_offset_transform(data_t)
                        best = True
            if col != "_reach":
                seeds[h] += list(agg["n"])
                d = g[g["_div"]]
                if len(d):
                    sc = ax.scatter(
                        d["_x"], d[col].fillna(0.0), marker="X", s=70, color=cmap[h],
                        edgecolor="black", linewidth=0.6, zorder=3,
                    )  # fmt: skip
                    sc.set_offset_transform(data_t)
            else:
                never = g[g["_reach"].isna()]
                if len(never):
                    sc = ax.scatter(
                        never["_x"], np.full(len(never), 0.96), marker="^", s=50,
                        facecolor="none", edgecolor=cmap[h], transform=top_t, zorder=3,
                    )  # fmt: skip
        if logx:
            ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.minorticks_off()
        ax.set_xlabel(LONG_NAMES.get(x, x))
        if col == "_reach":
            ax.set_ylabel(f"{STEP_LABEL}s to reach it")
            ax.set_title(f"first step with test accuracy ≥ {tgt:g}", fontsize=10)
        else:
            name = col.removeprefix("final_")
            ax.set_ylabel(f"final {LONG_NAMES.get(name, name)}")
            ax.set_title(f"final {name} (last step)", fontsize=10)
        ax.grid(alpha=0.3)
    handles: list = [Line2D([], [], color=cmap[h], marker="o") for h in hues]
    labels = [_with_n(h, seeds[h]) for h in hues]
    if errorbar is not None and any(n > 1 for ns in seeds.values() for n in ns):
        handles.append(Line2D([], [], ls="", marker="|", color="grey", ms=12, mew=1.5))
        labels.append(f"bars over seeds: {describe(errorbar)}")
    if best:
        handles.append(Line2D([], [], ls="", marker="*", color="grey", markeredgecolor="black",
                              ms=12))  # fmt: skip
        labels.append("best by validation accuracy")
    if runs["_div"].any():
        handles.append(
            Line2D([], [], ls="", marker="X", color="grey", markeredgecolor="black", ms=8)
        )
        labels.append("diverged (last finite value)")
    if target is not None and runs["_reach"].isna().any():
        handles.append(Line2D([], [], ls="", marker="^", mfc="none", color="grey", ms=7))
        labels.append("never reached target")
    legend_below(fig, handles, labels, title=hue)
    drawn = (
        f"{len(runs)} runs"
        if len(runs) == total
        else f"{len(runs)} of {total} runs ({total - len(runs)} without {x})"
    )
    suptitle(fig, title or f"sweep over {x}: {drawn}")
    return fig


def _with_n(name: str, ns: list[int]) -> str:
    """``bn`` for one run per point; ``bn (n=5)`` or ``bn (n=3-5)`` for several."""
    ns = [n for n in ns if n > 0]
    if not ns or max(ns) <= 1:
        return name
    lo, hi = min(ns), max(ns)
    return f"{name} (n={hi})" if lo == hi else f"{name} (n={lo}-{hi})"
