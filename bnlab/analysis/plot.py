"""Figures of runs and sweeps (matplotlib, Agg; no pyplot state; nothing written).

Every function takes the long tables of :mod:`bnlab.analysis.runs` (one run's or a sweep's)
and returns a :class:`matplotlib.figure.Figure`; nothing is shown or saved (files:
:mod:`bnlab.report`). Lines are told apart by the ``by`` column (default ``label``,
which :func:`bnlab.analysis.runs.load_sweep` adds and which names a configuration: runs that
differ only by their seed share it); a table without it is one run or configuration.

**Seeds.** Where one label holds several runs (``run`` values: seeds), a curve is
their mean with a shaded interval, like seaborn's ``errorbar``: ``("ci", 95)`` (the
default) a 95% Student-t interval of the mean with 5 runs or more and the min-max
range with fewer, ``"sd"``, ``("pi", 95)``, ``"minmax"``, or ``None`` (the mean
alone); see :mod:`bnlab.analysis.stats`. The legend says n and the interval, e.g.
``bn (n=5, 95% t)``. A label with one run is drawn as before. ``by="run"`` draws
every run on its own.

- :func:`drift_bands`: percentiles of one site over training, one panel per run
  (Ioffe & Szegedy 2015, Fig. 1 b/c);
- :func:`layer_moments`: mean and std of one site in every layer, runs overlaid;
- :func:`learning_curves`: test accuracy and train loss, runs overlaid;
- :func:`sweep_summary`: final test accuracy (and steps to a target) versus a swept
  value, one line per norm variant, error bars over seeds, diverged runs marked
  (:mod:`bnlab.analysis.plot_sweep`);
- :func:`gamma_beta`: the learned BN scale/shift per layer over training;
- :func:`layer_curves`: any per-layer statistics of a long (step, layer, stat, value)
  table over training, a panel per statistic x layer, runs overlaid (the gradient-ICS
  and landscape probes of ``ics.parquet``, weight/bias norms of ``layers.parquet``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from bnlab.analysis.plot_sweep import sweep_summary
from bnlab.analysis.plotkit import (
    BAND_ALPHA,
    DPI,
    LONG_NAMES,
    PANEL,
    STEP_LABEL,
    Bands,
    curve,
    figure,
    groups,
    legend_below,
    log_minor_label,
    marker,
    n_runs,
    percentile_stats,
    require,
    run_colors,
    run_legend,
    step_axis,
    suptitle,
    wrap,
)
from bnlab.analysis.runs import last_hidden_layer, layer_order
from bnlab.analysis.stats import ERRORBAR, describe, methods_label

__all__ = [
    "drift_bands",
    "layer_moments",
    "learning_curves",
    "sweep_summary",
    "gamma_beta",
    "layer_curves",
    "DPI",
    "STAT_NAMES",
]


def drift_bands(
    activations: pd.DataFrame,
    layer: str | None = None,
    site: str = "pre",
    *,
    by: str | None = "label",
    unit: int = -1,
    ncols: int = 4,
    sharey: bool | str = "auto",
    errorbar: Any = ERRORBAR,
    title: str | None = None,
) -> Figure:
    """Percentiles (``p15``/``p50``/``p85``...) of ``layer/site`` over training, a panel per run.

    The shape of Ioffe & Szegedy 2015, Fig. 1 b/c: the outer percentiles as thin
    lines with the band between them shaded, the median bold; panels share the step
    axis and the value axis (``sharey='auto'``: unless one run's range is over 10x
    the median run's, e.g. a blown-up run, which would flatten every other panel;
    the title then says so). ``layer`` defaults to the last hidden layer;
    ``unit=-1`` is the value pooled over every unit and example of the probe batch,
    ``unit=j`` unit j alone. A panel whose label holds several runs (seeds) shows
    each percentile's mean over them with its ``errorbar`` interval shaded, and a
    lighter band between the outer percentiles' means. Axes: one per label; lines:
    one per percentile; one band per label.
    """
    layer = layer or last_hidden_layer(activations)
    df = activations[
        (activations["layer"] == layer)
        & (activations["site"] == site)
        & (activations["unit"] == unit)
    ]
    pcts = percentile_stats(df["stat"].unique())
    df = df[df["stat"].isin(pcts)]
    require(df, f"percentiles of {layer}/{site} (unit {unit})")
    grouped = groups(df, by)
    n = len(grouped)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    size = (6.4, 3.8) if n == 1 else PANEL
    if sharey == "auto":
        spans = np.array([np.ptp(g["value"].to_numpy()) for _, g in grouped])
        sharey = not (n > 1 and spans.max() > 10 * max(float(np.median(spans)), 1e-12))
    fig, axes = figure(nrows, ncols, sharex=True, sharey=bool(sharey), size=size)
    for ax in axes.flat[n:]:
        fig.delaxes(ax)
    mid = pcts[len(pcts) // 2]
    bands = Bands(errorbar)
    for ax, (label, g) in zip(axes.flat, grouped, strict=False):
        several = n_runs(g) > 1
        if len(pcts) >= 2:  # one band per label: between the outer percentiles (seed means)
            wide = g.pivot_table(index="step", columns="stat", values="value").sort_index()
            ax.fill_between(
                wide.index.to_numpy(), wide[pcts[0]], wide[pcts[-1]], color="C0",
                alpha=0.08 if several else 0.15, linewidth=0, label=f"{pcts[0]}-{pcts[-1]}",
            )  # fmt: skip
        for s in pcts:
            bold = s == mid
            k, methods = curve(
                ax, g[g["stat"] == s], errorbar=errorbar, color="C0", label=s,
                linewidth=1.8 if bold else 0.9, linestyle="-" if bold else "--",
            )  # fmt: skip
            bands.add(label, k, methods)
        name = wrap(label) if label is not None else f"{layer}/{site}"
        if several:
            level = bands.spec[1] if bands.spec else None
            how = methods_label(bands.methods[label], level) or "mean"
            name += f"\n(mean of n={bands.n[label]}, {how})"
        ax.set_title(name, fontsize=10)
        step_axis(ax)
    for row in axes:
        row[0].set_ylabel(f"{layer}/{site} value" + ("" if unit < 0 else f" (unit {unit})"))
    # the last row may be incomplete: label the x axis of the bottom panel in each column
    for j in range(ncols):
        col = [a for a in axes[:, j] if a.figure is fig]
        if col:
            col[-1].set_xlabel(STEP_LABEL)
            col[-1].xaxis.set_tick_params(labelbottom=True)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if any(k > 1 for k in bands.n.values()) and bands.spec is not None:
        handles.append(Patch(color="C0", alpha=BAND_ALPHA, lw=0))
        names.append(f"over seeds: {describe(errorbar)}")
    legend_below(fig, handles, names, title="percentile")
    what = "pooled over units" if unit < 0 else f"unit {unit}"
    text = title or f"{layer}/{site}: percentiles on the probe batch ({what})"
    if not sharey and n > 1:
        text += " [value axes not shared: ranges differ by over 10x]"
    suptitle(fig, text)
    return fig


def layer_moments(
    activations: pd.DataFrame,
    site: str = "pre",
    *,
    by: str | None = "label",
    unit: int = -1,
    errorbar: Any = ERRORBAR,
    title: str | None = None,
) -> Figure:
    """Mean (top row) and std (bottom row) of ``layer{i}/site`` over training, a column per layer.

    Runs are overlaid, one colour each (several seeds of a label: their mean and
    ``errorbar`` band). Axes: 2 x number of layers; lines: one per label in each.
    """
    df = activations[
        (activations["site"] == site)
        & (activations["unit"] == unit)
        & (activations["stat"].isin(["mean", "std"]))
    ]
    require(df, f"mean/std of */{site} (unit {unit})")
    layers = layer_order(df["layer"].unique(), df.attrs.get("layer_order"))
    grouped = groups(df, by)
    cmap = run_colors(grouped)
    bands = Bands(errorbar)
    fig, axes = figure(2, len(layers), sharex=True, sharey="row")
    for j, layer in enumerate(layers):
        for i, stat in enumerate(("mean", "std")):
            ax = axes[i, j]
            for label, g in grouped:
                rows = g[(g["layer"] == layer) & (g["stat"] == stat)]
                k, methods = curve(
                    ax, rows, errorbar=errorbar, color=cmap[label], label=label, lw=1.2
                )
                bands.add(label, k, methods)
            if i == 0:
                ax.set_title(f"{layer}/{site}", fontsize=10)
            else:
                ax.set_xlabel(STEP_LABEL)
            if j == 0:
                ax.set_ylabel(stat)
            step_axis(ax)
    run_legend(fig, grouped, cmap, bands)
    suptitle(fig, title or f"mean and std of each layer's {site} site on the probe batch")
    return fig


def learning_curves(
    scalars: pd.DataFrame,
    *,
    by: str | None = "label",
    metrics: Sequence[str] = ("test_accuracy", "train_loss"),
    errorbar: Any = ERRORBAR,
    title: str | None = None,
) -> Figure:
    """One panel per metric (default test accuracy and train loss) over training, runs overlaid.

    Losses get a log axis. Several seeds of a label: their mean and ``errorbar``
    band. Axes: one per metric; lines: one per label with that metric. A task without
    classes (no accuracy rows) shows ``test_loss`` in place of ``test_accuracy``.
    """
    if "test_accuracy" in metrics and not scalars["name"].eq("test_accuracy").any():
        metrics = tuple("test_loss" if m == "test_accuracy" else m for m in metrics)
    df = scalars[scalars["name"].isin(metrics)]
    require(df, f"scalars {list(metrics)}")
    grouped = groups(df, by)
    cmap = run_colors(grouped)
    bands = Bands(errorbar)
    fig, axes = figure(1, len(metrics), sharex=True, size=(4.6, 3.4))
    for ax, metric in zip(axes[0], metrics, strict=True):
        positive = True
        for label, g in grouped:
            rows = g[g["name"] == metric]
            if not len(rows):
                continue
            positive &= bool((rows["value"] > 0).all())
            k, methods = curve(ax, rows, errorbar=errorbar, color=cmap[label], label=label, lw=1.3)
            bands.add(label, k, methods)
        if "loss" in metric and positive and ax.lines:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(log_minor_label))
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel(LONG_NAMES.get(metric, metric))
        ax.set_xlabel(STEP_LABEL)
        step_axis(ax)
    run_legend(fig, grouped, cmap, bands)
    if title:
        suptitle(fig, title)
    return fig


def gamma_beta(
    layers: pd.DataFrame,
    *,
    by: str | None = "label",
    errorbar: Any = ERRORBAR,
    title: str | None = None,
) -> Figure:
    """BN's learned gamma (top row) and beta (bottom row) per layer over training.

    For one run, lines are the mean over the layer's units and the shaded band ± their
    std across units. For a label with several runs (seeds), the line is the mean over
    runs of that units' mean and the band its ``errorbar`` interval over the runs.
    Runs without learned gamma/beta (``norm=none``, ``bn_noaffine``) have no such rows
    and are left out. Axes: 2 x layers; lines: one per label with gamma/beta.
    """
    df = layers[layers["stat"].isin(["gamma_mean", "gamma_std", "beta_mean", "beta_std"])]
    require(df, "gamma/beta (no run with a learned BN scale/shift)")
    names = layer_order(df["layer"].unique(), df.attrs.get("layer_order"))
    grouped = groups(df, by)
    cmap = run_colors(grouped)
    bands = Bands(errorbar)
    several = any(n_runs(g) > 1 for _, g in grouped)
    fig, axes = figure(2, len(names), sharex=True, sharey="row")
    for j, layer in enumerate(names):
        for i, p in enumerate(("gamma", "beta")):
            ax = axes[i, j]
            for label, g in grouped:
                rows = g[g["layer"] == layer]
                if n_runs(rows) > 1:
                    k, methods = curve(
                        ax, rows[rows["stat"] == f"{p}_mean"], errorbar=errorbar,
                        color=cmap[label], label=label, lw=1.2,
                    )  # fmt: skip
                    bands.add(label, k, methods)
                    continue
                wide = rows.pivot_table(index="step", columns="stat", values="value").sort_index()
                if f"{p}_mean" not in wide:
                    continue
                m = wide[f"{p}_mean"]
                ax.plot(wide.index, m, color=cmap[label], label=label, lw=1.2, **marker(len(m)))
                if f"{p}_std" in wide:
                    s = wide[f"{p}_std"]
                    ax.fill_between(wide.index, m - s, m + s, color=cmap[label], alpha=0.15, lw=0)
            if i == 0:
                ax.set_title(layer, fontsize=10)
            else:
                ax.set_xlabel(STEP_LABEL)
            if j == 0:
                what = "mean over units" if several else "mean ± std over units"
                ax.set_ylabel(f"{p} ({what})")
            step_axis(ax)
    run_legend(fig, grouped, cmap, bands)
    suptitle(fig, title or "learned BN scale (gamma) and shift (beta)")
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
    "update_ratio": "||dW|| / ||W|| (update/weight ratio)",
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
    errorbar: Any = ERRORBAR,
    title: str | None = None,
) -> Figure:
    """Per-layer statistics over training: a row per statistic, a column per layer.

    ``table`` is long (``step``, ``layer``, ``stat``, ``value``), e.g. a run's or a
    sweep's ``ics`` or ``layers``. Runs are overlaid, one colour each; ``smooth`` > 1
    draws a centred rolling median of that many points (raw points faint behind it;
    for several seeds, each run is smoothed before the mean and its ``errorbar``
    band); statistics in ``logy`` get a log axis (their values <= 0 are left out, as
    are non-finite values everywhere). Axes: len(stats) x layers; lines: one per label.
    """
    df = table[table["stat"].isin(list(stats))]
    v = df["value"].astype(float)
    df = df[np.isfinite(v) & ~(df["stat"].isin(list(logy)) & (v <= 0))]
    require(df, f"statistics {list(stats)}")
    names = (
        list(layers)
        if layers is not None
        else layer_order(df["layer"].unique(), df.attrs.get("layer_order"))
    )
    grouped = groups(df, by)
    cmap = run_colors(grouped)
    bands = Bands(errorbar)
    fig, axes = figure(len(stats), len(names), sharex=sharex, sharey="row")
    for i, stat in enumerate(stats):
        for j, layer in enumerate(names):
            ax = axes[i, j]
            for label, g in grouped:
                rows = g[(g["layer"] == layer) & (g["stat"] == stat)]
                if not len(rows):
                    continue
                k, methods = curve(
                    ax, rows, errorbar=errorbar, smooth=smooth, color=cmap[label], label=label,
                    lw=1.3,
                )  # fmt: skip
                bands.add(label, k, methods)
            if stat in logy and ax.lines:
                ax.set_yscale("log")
            if i == 0:
                ax.set_title(layer, fontsize=10)
            if i == len(stats) - 1:
                ax.set_xlabel(STEP_LABEL)
            if j == 0:
                ax.set_ylabel(wrap(STAT_NAMES.get(stat, stat), 26), fontsize=9)
            step_axis(ax)
    run_legend(fig, grouped, cmap, bands)
    if title:
        suptitle(fig, title)
    return fig
