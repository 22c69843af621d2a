"""Figures of runs and sweeps (matplotlib, Agg; no pyplot state).

Every plotting function takes the long tables of :mod:`bnlab.runs` (one run's or a
sweep's) and returns a :class:`matplotlib.figure.Figure`; nothing is shown. Runs
are told apart by the ``by`` column (default ``label``, which :func:`bnlab.runs.load_sweep`
adds); a table without it is one run.

- :func:`drift_bands`: percentiles of one site over training, one panel per run
  (Ioffe & Szegedy 2015, Fig. 1 b/c);
- :func:`layer_moments`: mean and std of one site in every layer, runs overlaid;
- :func:`learning_curves`: test accuracy and train loss, runs overlaid;
- :func:`sweep_summary`: final test accuracy (and steps to a target) versus a swept
  value, one line per norm variant, diverged runs marked;
- :func:`gamma_beta`: the learned BN scale/shift per layer over training;
- :func:`layer_curves`: any per-layer statistics of a long (step, layer, stat, value)
  table over training, a panel per statistic x layer, runs overlaid (the gradient-ICS
  and landscape probes of ``ics.parquet``, weight/bias norms of ``layers.parquet``).

:func:`save_run_figures` (called by the trainer at the end of every run) and
:func:`save_sweep_figures` write them as PNG; ``python -m bnlab.plot PATH`` does
either, by what PATH holds, and prints the paths.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import offset_copy

from bnlab.record import FIGURES
from bnlab.runs import (
    Sweep,
    find_runs,
    is_run_dir,
    last_hidden_layer,
    layer_order,
    load_run,
    load_sweep,
    steps_to_target,
)

__all__ = [
    "drift_bands",
    "layer_moments",
    "learning_curves",
    "sweep_summary",
    "gamma_beta",
    "layer_curves",
    "save_run_figures",
    "save_sweep_figures",
    "main",
]

STEP_LABEL = "training step"
PANEL = (3.8, 2.9)  # inches per panel
DPI = 120
_PCT = re.compile(r"^p(\d+(?:\.\d+)?)$")
_LONG_NAMES = {
    "optimizer.lr": "optimizer.lr (learning rate)",
    "test_accuracy": "test accuracy",
    "train_accuracy": "train accuracy",
    "train_loss": "train loss",
    "test_loss": "test loss",
}


# --------------------------------------------------------------------------- helpers


def _figure(nrows: int, ncols: int, *, sharex=True, sharey=False, size=PANEL, extra_h=0.0):
    fig = Figure(
        figsize=(size[0] * ncols, size[1] * nrows + extra_h), layout="constrained", dpi=DPI
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def _groups(df: pd.DataFrame, by: str | None) -> list[tuple[str | None, pd.DataFrame]]:
    """``(label, rows)`` per run in order of appearance; one unnamed group without ``by``."""
    if by and by in df.columns:
        return [(str(k), g) for k, g in df.groupby(by, sort=False)]
    return [(None, df)]


_FAMILIES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd")


def _colors(labels: Sequence[str | None], families: Sequence[str] | None = None) -> dict:
    """A colour per label: C0, C1... for up to 10 runs; for more, one colour family per
    ``families`` value (the norm variant), shades within it in order of appearance."""
    labels = list(labels)
    if families is not None and len(labels) > 10:
        fams = list(dict.fromkeys(families))
        if len(fams) <= len(_FAMILIES):
            out = {}
            for f_i, fam in enumerate(fams):
                members = [lab for lab, f in zip(labels, families, strict=True) if f == fam]
                cmap = matplotlib.colormaps[_FAMILIES[f_i]]
                shades = np.linspace(0.45, 0.95, len(members)) if len(members) > 1 else [0.75]
                out.update({lab: cmap(float(t)) for lab, t in zip(members, shades, strict=True)})
            return out
    if len(labels) <= 10:
        return {lab: f"C{i}" for i, lab in enumerate(labels)}
    cmap = matplotlib.colormaps["viridis"]
    shades = np.linspace(0, 0.95, len(labels))
    return {lab: cmap(float(t)) for lab, t in zip(labels, shades, strict=True)}


def _run_colors(groups: list[tuple[str | None, pd.DataFrame]], family: str = "norm") -> dict:
    labels = [lab for lab, _ in groups]
    if all(family in g.columns and len(g) for _, g in groups):
        return _colors(labels, [str(g[family].iloc[0]) for _, g in groups])
    return _colors(labels)


def _wrap(text: str, width: int = 42) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _legend_ncols(fig: Figure, labels: Sequence[str], fontsize: float = 9.0) -> int:
    """As many columns as fit the figure's width (about 0.6 em per character)."""
    width_pt = fig.get_figwidth() * 72
    per = max(len(str(lab)) for lab in labels) * 0.6 * fontsize + 40
    return max(1, min(len(labels), int(width_pt // per)))


def _legend_below(fig: Figure, handles: list, labels: list[str], **kw) -> None:
    if not labels:
        return
    ncols = _legend_ncols(fig, labels)
    rows = math.ceil(len(labels) / ncols) + (1 if kw.get("title") else 0)
    fig.set_figheight(fig.get_figheight() + 0.2 * rows + 0.1)  # room below the panels
    fig.legend(
        handles, labels, loc="outside lower center", ncols=ncols,
        frameon=False, fontsize=9, **kw,
    )  # fmt: skip


def _run_legend(fig: Figure, groups: list[tuple[str | None, pd.DataFrame]], colors: dict) -> None:
    """One legend entry per labelled run, in its colour, below the panels."""
    present = [lab for lab, _ in groups if lab is not None]
    _legend_below(fig, [Line2D([], [], color=colors[lab]) for lab in present], present)


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width."""
    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * 11)))
    lines = [w for part in text.split("\n") for w in (textwrap.wrap(part, width) or [""])]
    fig.suptitle("\n".join(lines), fontsize=11)


def _percentile_stats(stats) -> list[str]:
    found = [(float(m.group(1)), s) for s in stats if (m := _PCT.match(str(s)))]
    return [s for _, s in sorted(found)]


def _require(df: pd.DataFrame, what: str) -> None:
    if not len(df):
        raise ValueError(f"no rows to plot: {what}")


def _step_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_step_label))
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", color="grey")


def _step_label(v: float, _pos=None) -> str:
    """Whole steps only; thousands as ``10k`` so that long runs' ticks stay short."""
    if abs(v - round(v)) > 1e-6:
        return ""
    v = round(v)
    return f"{v / 1000:g}k" if abs(v) >= 1000 and v % 100 == 0 else f"{v:,}"


def _log_minor_label(v: float, _pos=None) -> str:
    """Label the 2s and 5s between decades of a log axis, plainly (0.2, 0.5, 2, 5)."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _marker(n: int) -> dict:
    """Dots on the line where there are few points (a run that stopped early)."""
    return {"marker": "o", "markersize": 3} if n <= 30 else {}


# --------------------------------------------------------------------------- figures


def drift_bands(
    activations: pd.DataFrame,
    layer: str | None = None,
    site: str = "pre",
    *,
    by: str | None = "label",
    unit: int = -1,
    ncols: int = 4,
    sharey: bool | str = "auto",
    title: str | None = None,
) -> Figure:
    """Percentiles (``p15``/``p50``/``p85``...) of ``layer/site`` over training, a panel per run.

    The shape of Ioffe & Szegedy 2015, Fig. 1 b/c: the outer percentiles as thin
    lines with the band between them shaded, the median bold; panels share the step
    axis and the value axis (``sharey='auto'``: unless one run's range is over 10x
    the median run's, e.g. a blown-up run, which would flatten every other panel;
    the title then says so). ``layer`` defaults to the last hidden layer;
    ``unit=-1`` is the value pooled over every unit and example of the probe batch,
    ``unit=j`` unit j alone. Axes: one per run; lines: one per percentile in each.
    """
    layer = layer or last_hidden_layer(activations)
    df = activations[
        (activations["layer"] == layer)
        & (activations["site"] == site)
        & (activations["unit"] == unit)
    ]
    pcts = _percentile_stats(df["stat"].unique())
    df = df[df["stat"].isin(pcts)]
    _require(df, f"percentiles of {layer}/{site} (unit {unit})")
    groups = _groups(df, by)
    n = len(groups)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    size = (6.4, 3.8) if n == 1 else PANEL
    if sharey == "auto":
        spans = np.array([np.ptp(g["value"].to_numpy()) for _, g in groups])
        sharey = not (n > 1 and spans.max() > 10 * max(float(np.median(spans)), 1e-12))
    fig, axes = _figure(nrows, ncols, sharex=True, sharey=bool(sharey), size=size)
    for ax in axes.flat[n:]:
        fig.delaxes(ax)
    mid = pcts[len(pcts) // 2]
    for ax, (label, g) in zip(axes.flat, groups, strict=False):
        wide = g.pivot_table(index="step", columns="stat", values="value").sort_index()
        steps = wide.index.to_numpy()
        if len(pcts) >= 2:
            ax.fill_between(
                steps, wide[pcts[0]], wide[pcts[-1]], color="C0", alpha=0.15, linewidth=0
            )
        for s in pcts:
            bold = s == mid
            ax.plot(
                steps,
                wide[s],
                color="C0" if bold else "C0",
                linewidth=1.8 if bold else 0.9,
                linestyle="-" if bold else "--",
                label=s,
                **_marker(len(steps)),
            )
        ax.set_title(_wrap(label) if label is not None else f"{layer}/{site}", fontsize=10)
        _step_axis(ax)
    for ax in axes[-1]:
        ax.set_xlabel(STEP_LABEL)
    for row in axes:
        row[0].set_ylabel(f"{layer}/{site} value" + ("" if unit < 0 else f" (unit {unit})"))
    # the last row may be incomplete: label the x axis of the bottom panel in each column
    for j in range(ncols):
        col = [a for a in axes[:, j] if a.figure is fig]
        if col:
            col[-1].set_xlabel(STEP_LABEL)
            col[-1].xaxis.set_tick_params(labelbottom=True)
    handles, names = axes.flat[0].get_legend_handles_labels()
    _legend_below(fig, handles, names, title="percentile")
    what = "pooled over units" if unit < 0 else f"unit {unit}"
    text = title or f"{layer}/{site}: percentiles on the probe batch ({what})"
    if not sharey and n > 1:
        text += " [value axes not shared: ranges differ by over 10x]"
    _suptitle(fig, text)
    return fig


def layer_moments(
    activations: pd.DataFrame,
    site: str = "pre",
    *,
    by: str | None = "label",
    unit: int = -1,
    title: str | None = None,
) -> Figure:
    """Mean (top row) and std (bottom row) of ``layer{i}/site`` over training, a column per layer.

    Runs are overlaid, one colour each. Axes: 2 x number of layers; lines: one per
    run in each.
    """
    df = activations[
        (activations["site"] == site)
        & (activations["unit"] == unit)
        & (activations["stat"].isin(["mean", "std"]))
    ]
    _require(df, f"mean/std of */{site} (unit {unit})")
    layers = layer_order(df["layer"].unique())
    groups = _groups(df, by)
    colors = _run_colors(groups)
    fig, axes = _figure(2, len(layers), sharex=True, sharey="row")
    for j, layer in enumerate(layers):
        for i, stat in enumerate(("mean", "std")):
            ax = axes[i, j]
            for label, g in groups:
                rows = g[(g["layer"] == layer) & (g["stat"] == stat)].sort_values("step")
                ax.plot(
                    rows["step"], rows["value"], color=colors[label], label=label, lw=1.2,
                    **_marker(len(rows)),
                )  # fmt: skip
            if i == 0:
                ax.set_title(f"{layer}/{site}", fontsize=10)
            else:
                ax.set_xlabel(STEP_LABEL)
            if j == 0:
                ax.set_ylabel(stat)
            _step_axis(ax)
    _run_legend(fig, groups, colors)
    _suptitle(fig, title or f"mean and std of each layer's {site} site on the probe batch")
    return fig


def learning_curves(
    scalars: pd.DataFrame,
    *,
    by: str | None = "label",
    metrics: Sequence[str] = ("test_accuracy", "train_loss"),
    title: str | None = None,
) -> Figure:
    """One panel per metric (default test accuracy and train loss) over training, runs overlaid.

    Losses get a log axis. Axes: one per metric; lines: one per run with that metric.
    """
    df = scalars[scalars["name"].isin(metrics)]
    _require(df, f"scalars {list(metrics)}")
    groups = _groups(df, by)
    colors = _run_colors(groups)
    fig, axes = _figure(1, len(metrics), sharex=True, size=(4.6, 3.4))
    for ax, metric in zip(axes[0], metrics, strict=True):
        positive = True
        for label, g in groups:
            rows = g[g["name"] == metric].sort_values("step")
            if not len(rows):
                continue
            positive &= bool((rows["value"] > 0).all())
            ax.plot(
                rows["step"], rows["value"], color=colors[label], label=label, lw=1.3,
                **_marker(len(rows)),
            )  # fmt: skip
        if "loss" in metric and positive and ax.lines:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(_log_minor_label))
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel(_LONG_NAMES.get(metric, metric))
        ax.set_xlabel(STEP_LABEL)
        _step_axis(ax)
    _run_legend(fig, groups, colors)
    if title:
        _suptitle(fig, title)
    return fig


def sweep_summary(
    runs: pd.DataFrame,
    scalars: pd.DataFrame | None = None,
    *,
    x: str = "optimizer.lr",
    hue: str = "norm",
    metric: str = "final_test_accuracy",
    target: float | None = None,
    title: str | None = None,
) -> Figure:
    """Final test accuracy versus ``x`` (the learning rate), one line per ``hue`` (norm variant).

    ``runs`` is :attr:`bnlab.runs.Sweep.runs`. Lines join the mean over runs that
    did not diverge (several seeds average); diverged runs are marked with an X at
    their last finite value. With ``target`` (and ``scalars``) a second panel
    shows the first step at which test accuracy reached ``target``; runs that never
    did are marked (^) along the top. Axes: 1, or 2 with ``target``; lines: one per
    ``hue`` value in each.
    """
    _require(runs, "runs")
    if x not in runs.columns:
        raise ValueError(f"runs has no column {x!r}; columns: {list(runs.columns)}")
    runs = runs.copy()
    if hue not in runs.columns:
        runs[hue] = "all runs"
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
    fig, axes = _figure(1, len(panels), sharex=True, size=(4.8, 3.6))
    hues = list(dict.fromkeys(runs[hue].astype(str)))
    colors = _colors(hues)
    xs = np.sort(runs["_x"].unique())
    logx = xs.min() > 0 and xs.max() / xs.min() >= 10
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
            line = ok.groupby("_x")[col].mean().sort_index()
            (ln,) = ax.plot(
                line.index, line.to_numpy(), color=colors[h], marker="o", label=h, lw=1.5
            )  # fmt: skip
            ln.set_transform(data_t)
            if col != "_reach":
                d = g[g["_div"]]
                if len(d):
                    sc = ax.scatter(
                        d["_x"], d[col].fillna(0.0), marker="X", s=70, color=colors[h],
                        edgecolor="black", linewidth=0.6, zorder=3,
                    )  # fmt: skip
                    sc.set_offset_transform(data_t)
            else:
                never = g[g["_reach"].isna()]
                if len(never):
                    sc = ax.scatter(
                        never["_x"], np.full(len(never), 0.96), marker="^", s=50,
                        facecolor="none", edgecolor=colors[h], transform=top_t, zorder=3,
                    )  # fmt: skip
        if logx:
            ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.minorticks_off()
        ax.set_xlabel(_LONG_NAMES.get(x, x))
        if col == "_reach":
            ax.set_ylabel(f"{STEP_LABEL}s to reach it")
            ax.set_title(f"first step with test accuracy ≥ {tgt:g}", fontsize=10)
        else:
            name = col.removeprefix("final_")
            ax.set_ylabel(f"final {_LONG_NAMES.get(name, name)}")
            ax.set_title(f"final {name} (last step)", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[h], marker="o") for h in hues]
    labels = list(hues)
    if runs["_div"].any():
        handles.append(
            Line2D([], [], ls="", marker="X", color="grey", markeredgecolor="black", ms=8)
        )
        labels.append("diverged (last finite value)")
    if target is not None and runs["_reach"].isna().any():
        handles.append(Line2D([], [], ls="", marker="^", mfc="none", color="grey", ms=7))
        labels.append("never reached target")
    _legend_below(fig, handles, labels, title=hue)
    _suptitle(fig, title or f"sweep over {x}: {len(runs)} runs")
    return fig


def gamma_beta(
    layers: pd.DataFrame,
    *,
    by: str | None = "label",
    title: str | None = None,
) -> Figure:
    """BN's learned gamma (top row) and beta (bottom row) per layer over training.

    Lines are the mean over the layer's units, the shaded band ± their std across
    units. Runs without learned gamma/beta (``norm=none``, ``bn_noaffine``) have no
    such rows and are left out. Axes: 2 x layers; lines: one per run with gamma/beta.
    """
    df = layers[layers["stat"].isin(["gamma_mean", "gamma_std", "beta_mean", "beta_std"])]
    _require(df, "gamma/beta (no run with a learned BN scale/shift)")
    names = layer_order(df["layer"].unique())
    groups = _groups(df, by)
    colors = _run_colors(groups)
    fig, axes = _figure(2, len(names), sharex=True, sharey="row")
    for j, layer in enumerate(names):
        for i, p in enumerate(("gamma", "beta")):
            ax = axes[i, j]
            for label, g in groups:
                rows = g[g["layer"] == layer]
                wide = rows.pivot_table(index="step", columns="stat", values="value").sort_index()
                if f"{p}_mean" not in wide:
                    continue
                m = wide[f"{p}_mean"]
                ax.plot(wide.index, m, color=colors[label], label=label, lw=1.2, **_marker(len(m)))
                if f"{p}_std" in wide:
                    s = wide[f"{p}_std"]
                    ax.fill_between(wide.index, m - s, m + s, color=colors[label], alpha=0.15, lw=0)
            if i == 0:
                ax.set_title(layer, fontsize=10)
            else:
                ax.set_xlabel(STEP_LABEL)
            if j == 0:
                ax.set_ylabel(f"{p} (mean ± std over units)")
            _step_axis(ax)
    _run_legend(fig, groups, colors)
    _suptitle(fig, title or "learned BN scale (gamma) and shift (beta)")
    return fig


STAT_NAMES = {
    "grad_diff_l2": "||G - G'||  (gradient change)",
    "grad_cos": "cos(G, G')",
    "loss_range": "loss range along the gradient",
    "grad_predictiveness": "max ||grad change|| along the gradient",
    "beta_smoothness": "effective beta-smoothness",
    "grad_l2": "||g|| (gradient norm)",
    "weight_norm": "||W|| (weight norm)",
    "bias_rms": "rms of the linear bias b",
    "grad_norm": "||dL/dW|| (gradient norm)",
}


def layer_curves(
    table: pd.DataFrame,
    stats: Sequence[str],
    *,
    layers: Sequence[str] | None = None,
    by: str | None = "label",
    logy: Sequence[str] = (),
    smooth: int = 1,
    sharex: bool = True,
    title: str | None = None,
) -> Figure:
    """Per-layer statistics over training: a row per statistic, a column per layer.

    ``table`` is long (``step``, ``layer``, ``stat``, ``value``), e.g. a run's or a
    sweep's ``ics`` or ``layers``. Runs are overlaid, one colour each; ``smooth`` > 1
    draws a centred rolling median of that many points (raw points faint behind it);
    statistics in ``logy`` get a log axis (their values <= 0 are left out, as are
    non-finite values everywhere). Axes: len(stats) x layers; lines: one per run.
    """
    df = table[table["stat"].isin(list(stats))]
    v = df["value"].astype(float)
    df = df[np.isfinite(v) & ~(df["stat"].isin(list(logy)) & (v <= 0))]
    _require(df, f"statistics {list(stats)}")
    names = list(layers) if layers is not None else layer_order(df["layer"].unique())
    groups = _groups(df, by)
    colors = _run_colors(groups)
    fig, axes = _figure(len(stats), len(names), sharex=sharex, sharey="row")
    for i, stat in enumerate(stats):
        for j, layer in enumerate(names):
            ax = axes[i, j]
            for label, g in groups:
                rows = g[(g["layer"] == layer) & (g["stat"] == stat)].sort_values("step")
                if not len(rows):
                    continue
                v = rows["value"].astype(float)
                if smooth > 1:
                    ax.plot(rows["step"], v, color=colors[label], lw=0.5, alpha=0.25)
                    v = v.rolling(smooth, center=True, min_periods=1).median()
                ax.plot(
                    rows["step"], v, color=colors[label], label=label, lw=1.3,
                    **_marker(len(rows)),
                )  # fmt: skip
            if stat in logy and ax.lines:
                ax.set_yscale("log")
            if i == 0:
                ax.set_title(layer, fontsize=10)
            if i == len(stats) - 1:
                ax.set_xlabel(STEP_LABEL)
            if j == 0:
                ax.set_ylabel(_wrap(STAT_NAMES.get(stat, stat), 26), fontsize=9)
            _step_axis(ax)
    _run_legend(fig, groups, colors)
    if title:
        _suptitle(fig, title)
    return fig


# --------------------------------------------------------------------------- files


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _run_title(run) -> str:
    parts = [run.label]
    data = run.value("data")
    if data:
        parts.append(str(data))
    lr = run.value("optimizer.lr")
    if lr is not None:
        parts.append(f"lr {lr:g}" if isinstance(lr, int | float) else f"lr {lr}")
    status = run.status
    if status == "diverged":
        status = f"diverged at step {run.summary.get('diverged_at')}"
    elif run.summary.get("step") is not None:
        status = f"{status} at step {run.summary['step']:,}"
    return ", ".join(parts) + f" ({status})"


def save_run_figures(run_dir: str | Path) -> list[Path]:
    """Write one run's figures as PNG into ``run_dir/figures/``; return their paths.

    The drift bands of the last hidden layer's ``pre`` site, the learning curves,
    the per-layer mean/std of ``pre`` and, where BN learns them, gamma/beta. A
    figure whose rows are missing (a run that diverged at once, a table not
    written) is skipped, never an error.
    """
    run = load_run(run_dir)
    out = run.path / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    label = run.label
    title = _run_title(run)
    acts = run.activations.assign(label=label)
    paths: list[Path] = []
    layer = last_hidden_layer(acts)
    pre = acts[(acts["site"] == "pre") & (acts["unit"] == -1)] if len(acts) else acts
    if layer and len(pre[pre["layer"] == layer]):
        what = f"{layer}/pre percentiles on the probe batch (pooled over units)"
        fig = drift_bands(pre, layer, "pre", title=f"{what}\n{title}")
        paths.append(_save(fig, out / f"drift_{layer}_pre.png"))
    if len(run.scalars) and run.scalars["name"].isin(["test_accuracy", "train_loss"]).any():
        fig = learning_curves(run.scalars.assign(label=label), title=title)
        paths.append(_save(fig, out / "learning_curves.png"))
    if len(pre) and pre["stat"].isin(["mean", "std"]).any():
        what = "mean and std of each layer's pre site on the probe batch"
        fig = layer_moments(pre, "pre", title=f"{what}\n{title}")
        paths.append(_save(fig, out / "layer_moments_pre.png"))
    lay = run.layers
    if len(lay) and lay["stat"].isin(["gamma_mean", "beta_mean"]).any():
        what = "learned BN scale (gamma) and shift (beta)"
        fig = gamma_beta(lay.assign(label=label), title=f"{what}\n{title}")
        paths.append(_save(fig, out / "gamma_beta.png"))
    return paths


def _auto_target(runs: pd.DataFrame) -> float | None:
    """90% of the best final test accuracy of the runs that did not diverge."""
    if "final_test_accuracy" not in runs:
        return None
    ok = runs.loc[runs["status"] != "diverged", "final_test_accuracy"].dropna()
    return round(0.9 * float(ok.max()), 2) if len(ok) else None


def _sweep_x(sweep: Sweep) -> str | None:
    if "optimizer.lr" in sweep.varying:
        return "optimizer.lr"
    for k in sweep.varying:
        if pd.api.types.is_numeric_dtype(sweep.runs[k]):
            return k
    return None


def save_sweep_figures(
    sweep: Sweep | str | Path,
    out: str | Path | None = None,
    *,
    layer: str | None = None,
    site: str = "pre",
    target: float | str | None = "auto",
) -> list[Path]:
    """Write a sweep's figures as PNG into ``out`` (default ``<sweep dir>/figures``).

    Drift bands (runs side by side), per-layer mean/std, learning curves,
    gamma/beta where present, and the sweep summary when a numeric key (the
    learning rate first) varies. ``target='auto'``: 90% of the best final accuracy.
    """
    if not isinstance(sweep, Sweep):
        root = Path(sweep)
        sweep = load_sweep(sweep)
    else:
        root = Path(sweep.members[0].path).parent
    out = Path(out) if out is not None else root / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    acts = sweep.activations
    layer = layer or last_hidden_layer(acts)
    at_site = acts[(acts["site"] == site) & (acts["unit"] == -1)] if len(acts) else acts
    if layer and len(at_site[at_site["layer"] == layer]):
        paths.append(_save(drift_bands(at_site, layer, site), out / f"drift_{layer}_{site}.png"))
    if len(at_site) and at_site["stat"].isin(["mean", "std"]).any():
        paths.append(_save(layer_moments(at_site, site), out / f"layer_moments_{site}.png"))
    sc = sweep.scalars
    if len(sc) and sc["name"].isin(["test_accuracy", "train_loss"]).any():
        paths.append(_save(learning_curves(sc), out / "learning_curves.png"))
    lay = sweep.layers
    if len(lay) and lay["stat"].isin(["gamma_mean", "beta_mean"]).any():
        paths.append(_save(gamma_beta(lay), out / "gamma_beta.png"))
    x = _sweep_x(sweep)
    if x is not None and "final_test_accuracy" in sweep.runs:
        if target == "auto":
            target = _auto_target(sweep.runs)
        fig = sweep_summary(sweep.runs, sc, x=x, target=target if len(sc) else None)
        paths.append(_save(fig, out / "sweep_summary.png"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bnlab.plot",
        description="Write the figures of a run or a sweep as PNG and print their paths.",
    )
    ap.add_argument("path", nargs="+", help="a run dir, a multirun dir, or globs of run dirs")
    ap.add_argument("--out", help="folder for the PNGs (default: <path>/figures)")
    ap.add_argument("--layer", help="layer of the drift figure (default: last hidden layer)")
    ap.add_argument("--site", default="pre", help="site of the drift and mean/std figures")
    ap.add_argument(
        "--target", default="auto",
        help="test accuracy for the steps-to-target panel (default: 90%% of the best; 'none')",
    )  # fmt: skip
    args = ap.parse_args(argv)
    target = None if args.target == "none" else args.target
    if target not in (None, "auto"):
        target = float(target)
    try:
        runs = find_runs(args.path)
    except FileNotFoundError as e:
        print(f"bnlab.plot: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"bnlab.plot: no run directories under {' '.join(args.path)}", file=sys.stderr)
        return 2
    single = len(args.path) == 1 and is_run_dir(args.path[0])
    if single and args.out is None and args.layer is None and args.site == "pre":
        paths = save_run_figures(args.path[0])
    else:
        sweep = load_sweep(runs)
        if args.out is None:
            if len(args.path) == 1 and Path(args.path[0]).is_dir():
                root = Path(args.path[0])
            else:
                parents = [str(Path(r).resolve().parent) for r in runs]
                root = Path(os.path.commonpath(parents))
            out = root / FIGURES
        else:
            out = Path(args.out)
        paths = save_sweep_figures(sweep, out, layer=args.layer, site=args.site, target=target)
    if not paths:
        print("bnlab.plot: nothing to plot (empty tables)", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
