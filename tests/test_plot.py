"""Figures (bnlab.analysis.plot): axes, lines and bands per table (files: test_report.py)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from scipy import stats as sps
from test_runs import fake_run, fake_sweep

from bnlab.analysis import plot
from bnlab.analysis.runs import load_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """norm in {none, bn, bn_noaffine} x lr in {0.1, 0.5, 2.0}; (bn, 2.0) diverged."""
    root = fake_sweep(
        tmp_path_factory.mktemp("s") / "sweep", norms=("none", "bn", "bn_noaffine"), lrs=(0.1, 0.5)
    )
    fake_run(root / "6", norm="none", lr=2.0, status="diverged", diverged_at=75)
    fake_run(root / "7", norm="bn", lr=2.0)
    fake_run(root / "8", norm="bn_noaffine", lr=2.0)
    return load_sweep(root)


def _lines(ax):
    return [ln for ln in ax.lines if not ln.get_label().startswith("_child")] or ax.lines


def test_drift_bands(sweep):
    fig = plot.drift_bands(sweep.activations, "layer3", "pre")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 9  # one panel per run
    for ax in fig.axes:
        assert len(ax.lines) == 3  # p15, p50, p85
        assert [ln.get_label() for ln in ax.lines] == ["p15", "p50", "p85"]
    ys = {ax.get_ylim() for ax in fig.axes}
    assert len(ys) == 1  # shared axes
    assert (
        fig.axes[0].get_xlabel() == "training step" or fig.axes[-1].get_xlabel() == "training step"
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert "norm=bn, optimizer.lr=0.5" in [t.replace("\n", " ") for t in titles]
    # default layer: the last hidden layer; a tracked unit; a single run without labels
    fig = plot.drift_bands(sweep.members[0].activations, unit=0)
    assert len(fig.axes) == 1 and "layer3/pre" in fig.axes[0].get_ylabel()
    with pytest.raises(ValueError, match="no rows"):
        plot.drift_bands(sweep.activations, "layer9", "pre")


def test_layer_moments(sweep):
    fig = plot.layer_moments(sweep.activations, "pre")
    assert len(fig.axes) == 2 * 3  # mean and std x 3 layers
    for ax in fig.axes:
        assert len(ax.lines) == 9  # one per run
    assert fig.axes[0].get_title() == "layer1/pre"
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == [
        "norm=none, optimizer.lr=0.1",
        "norm=none, optimizer.lr=0.5",
    ]


def test_learning_curves(sweep):
    fig = plot.learning_curves(sweep.scalars)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 9
        assert ax.get_xlabel() == "training step"
    assert fig.axes[1].get_yscale() == "log"
    fig = plot.learning_curves(sweep.scalars, metrics=["test_accuracy", "train_loss", "lr"])
    assert len(fig.axes) == 3


def test_sweep_summary(sweep):
    fig = plot.sweep_summary(sweep.runs)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # one per norm variant
    assert [ln.get_label() for ln in ax.lines] == ["none", "bn", "bn_noaffine"]
    assert len(ax.collections) == 1  # the diverged run's marker
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "diverged (last finite value)" in legend
    assert ax.get_xscale() == "log" and "learning rate" in ax.get_xlabel()
    # the diverged run is not on its variant's line
    none_line = ax.lines[0]
    assert list(none_line.get_xdata()) == [0.1, 0.5]
    fig = plot.sweep_summary(sweep.runs, sweep.scalars, target=0.8)
    assert len(fig.axes) == 2
    assert all(len(a.lines) == 3 for a in fig.axes)
    assert "0.8" in fig.axes[1].get_title()


def test_gamma_beta(sweep):
    fig = plot.gamma_beta(sweep.layers)
    assert len(fig.axes) == 2 * 3
    for ax in fig.axes:
        assert len(ax.lines) == 3  # only the bn runs learn gamma/beta
    none_only = sweep.layers[sweep.layers["norm"] == "none"]
    with pytest.raises(ValueError, match="gamma/beta"):
        plot.gamma_beta(none_only)


def test_drift_bands_unshared_when_one_run_blows_up(sweep):
    acts = sweep.activations.copy()
    first = acts["run"] == acts["run"].iloc[0]
    acts.loc[first, "value"] *= 100.0
    fig = plot.drift_bands(acts, "layer3", "pre")
    assert len({ax.get_ylim() for ax in fig.axes}) > 1
    assert "not shared" in fig._suptitle.get_text()
    fig = plot.drift_bands(acts, "layer3", "pre", sharey=True)
    assert len({ax.get_ylim() for ax in fig.axes}) == 1


def test_many_runs_get_distinct_colours_by_norm(tmp_path):
    root = fake_sweep(tmp_path / "big", norms=("none", "bn", "bn_noaffine"), lrs=(0.1, 0.5, 1, 2))
    big = load_sweep(root)
    fig = plot.learning_curves(big.scalars)
    colours = [tuple(ln.get_color()) for ln in fig.axes[0].lines]
    assert len(colours) == 12 and len(set(colours)) == 12


# --------------------------------------------------------------------------- seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """norm in {none, bn} x lr in {0.1, 0.5} x 5 seeds: 20 runs, 4 configurations."""
    root = fake_sweep(tmp_path_factory.mktemp("seeds") / "s", lrs=(0.1, 0.5), seeds=range(5))
    return load_sweep(root)


CONFIGS = [
    "norm=none, optimizer.lr=0.1",
    "norm=none, optimizer.lr=0.5",
    "norm=bn, optimizer.lr=0.1",
    "norm=bn, optimizer.lr=0.5",
]


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def _band_edges(band, xs):
    """The lower and upper edge of a fill_between polygon at each x."""
    verts = band.get_paths()[0].vertices
    edges = [verts[np.isclose(verts[:, 0], x), 1] for x in xs]
    return np.array([e.min() for e in edges]), np.array([e.max() for e in edges])


def test_learning_curves_mean_and_t_band_over_five_seeds(seeds):
    fig = plot.learning_curves(seeds.scalars)
    for ax in fig.axes:
        assert len(ax.lines) == 4 and len(_bands(ax)) == 4  # one per configuration
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{c} (n=5, 95% t)" for c in CONFIGS]
    # the numbers: the mean over the seeds at each step and the 95% t interval
    sc = seeds.scalars
    rows = sc[(sc["label"] == CONFIGS[0]) & (sc["name"] == "test_accuracy")]
    wide = rows.pivot(index="step", columns="run", values="value")
    assert wide.shape[1] == 5 and (wide.std(axis=1) > 0).all()
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), wide.index)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), wide.mean(axis=1))
    lo, hi = sps.t.interval(0.95, 4, loc=wide.mean(axis=1), scale=sps.sem(wide, axis=1))
    got_lo, got_hi = _band_edges(_bands(ax)[0], wide.index)
    np.testing.assert_allclose(got_lo, lo)
    np.testing.assert_allclose(got_hi, hi)


def test_three_seeds_band_is_min_max_and_errorbar_options(tmp_path):
    sweep = load_sweep(fake_sweep(tmp_path / "s", norms=("bn",), lrs=(0.5,), seeds=range(3)))
    assert list(sweep.runs["label"]) == ["bn"] * 3  # only the seed varies
    fig = plot.learning_curves(sweep.scalars, metrics=["test_accuracy"])
    (ax,) = fig.axes
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bn (n=3, min-max)"]
    wide = sweep.scalars[sweep.scalars["name"] == "test_accuracy"].pivot(
        index="step", columns="run", values="value"
    )
    got_lo, got_hi = _band_edges(_bands(ax)[0], wide.index)
    np.testing.assert_allclose(got_lo, wide.min(axis=1))
    np.testing.assert_allclose(got_hi, wide.max(axis=1))
    # sd band; no band at all; every run on its own
    fig = plot.learning_curves(sweep.scalars, metrics=["test_accuracy"], errorbar="sd")
    got_lo, _ = _band_edges(_bands(fig.axes[0])[0], wide.index)
    np.testing.assert_allclose(got_lo, wide.mean(axis=1) - wide.std(axis=1))
    assert "(n=3, sd)" in fig.legends[0].get_texts()[0].get_text()
    fig = plot.learning_curves(sweep.scalars, metrics=["test_accuracy"], errorbar=None)
    assert len(fig.axes[0].lines) == 1 and not _bands(fig.axes[0])
    fig = plot.learning_curves(sweep.scalars, metrics=["test_accuracy"], by="run")
    assert len(fig.axes[0].lines) == 3 and not _bands(fig.axes[0])


def test_single_seed_draws_no_band(sweep):
    for fig in (
        plot.learning_curves(sweep.scalars),
        plot.layer_moments(sweep.activations, "pre"),
        plot.layer_curves(sweep.layers, ["weight_norm"]),
    ):
        assert all(not _bands(ax) for ax in fig.axes)
        assert not any("(n=" in t.get_text() for t in fig.legends[0].get_texts())


def test_per_layer_figures_band_over_seeds(seeds):
    fig = plot.layer_moments(seeds.activations, "pre")
    assert len(fig.axes) == 6
    assert all(len(ax.lines) == 4 and len(_bands(ax)) == 4 for ax in fig.axes)
    fig = plot.layer_curves(seeds.layers, ["weight_norm", "grad_norm"], smooth=3)
    assert all(len(ax.lines) == 4 and len(_bands(ax)) == 4 for ax in fig.axes)
    fig = plot.gamma_beta(seeds.layers)  # only the bn configurations learn gamma/beta
    assert all(len(ax.lines) == 2 and len(_bands(ax)) == 2 for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "gamma (mean over units)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{c} (n=5, 95% t)" for c in CONFIGS[2:]]


def test_drift_bands_over_seeds(seeds):
    fig = plot.drift_bands(seeds.activations, "layer3", "pre")
    assert len(fig.axes) == 4  # a panel per configuration, not per run
    for ax in fig.axes:
        assert [ln.get_label() for ln in ax.lines] == ["p15", "p50", "p85"]
        band, *intervals = _bands(ax)
        assert len(intervals) == 3  # each percentile's interval over the seeds
        assert band.get_label() == "p15-p85"  # one band per label, between the seed means
        xs = ax.lines[0].get_xdata()
        lo, hi = _band_edges(band, xs)
        np.testing.assert_allclose(lo, ax.lines[0].get_ydata(), rtol=1e-6)
        np.testing.assert_allclose(hi, ax.lines[2].get_ydata(), rtol=1e-6)
        assert "mean of n=5, 95% t" in ax.get_title()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[-1].startswith("over seeds: 95% t interval")


def test_sweep_summary_error_bars_over_seeds(seeds):
    fig = plot.sweep_summary(seeds.runs)
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.lines] == ["none", "bn"]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 2
    runs = seeds.runs
    acc = runs[runs["norm"] == "none"].groupby("optimizer.lr")["final_test_accuracy"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), acc.mean())
    lo, hi = sps.t.interval(0.95, 4, loc=acc.mean(), scale=acc.sem())
    segs = bars[0].get_segments()
    np.testing.assert_allclose([s[0][1] for s in segs], lo)
    np.testing.assert_allclose([s[1][1] for s in segs], hi)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["none (n=5)", "bn (n=5)"]
    assert legend[2].startswith("bars over seeds: 95% t interval")
