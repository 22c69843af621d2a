"""Figures (bnlab.plot): axes and lines per table, PNG files, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from test_runs import fake_run, fake_sweep

from bnlab import plot
from bnlab.record import ACTIVATIONS, FIGURES, SCALARS, RunRecord
from bnlab.runs import load_run, load_sweep

ROOT = Path(__file__).resolve().parents[1]


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


def test_save_run_figures(tmp_path):
    fake_run(tmp_path / "r", norm="bn")
    paths = plot.save_run_figures(tmp_path / "r")
    names = sorted(p.name for p in paths)
    assert names == [
        "drift_layer3_pre.png",
        "gamma_beta.png",
        "layer_moments_pre.png",
        "learning_curves.png",
    ]
    for p in paths:
        assert p.parent == tmp_path / "r" / FIGURES and p.stat().st_size > 5000


def test_save_run_figures_diverged_and_empty(tmp_path):
    # diverged after one probe interval: few rows, no gamma/beta (norm=none)
    fake_run(tmp_path / "d", norm="none", status="diverged", diverged_at=2, steps=200)
    paths = plot.save_run_figures(tmp_path / "d")
    # (the step-0 test accuracy still makes a learning-curve figure)
    assert {p.name for p in paths} == {
        "drift_layer3_pre.png", "layer_moments_pre.png", "learning_curves.png",
    }  # fmt: skip
    # empty tables (diverged on the first step before any rows): no figures, no error
    e = tmp_path / "e"
    rec = RunRecord(e)
    rec.write_tables()
    rec.write_summary(status="diverged", step=1, steps=100, diverged_at=1, final={})
    assert plot.save_run_figures(e) == []
    # tables missing altogether
    (e / ACTIVATIONS).unlink()
    (e / SCALARS).unlink()
    assert plot.save_run_figures(e) == []


def test_save_sweep_figures(sweep, tmp_path):
    paths = plot.save_sweep_figures(sweep, tmp_path / "figs")
    assert {p.name for p in paths} == {
        "drift_layer3_pre.png", "layer_moments_pre.png", "learning_curves.png",
        "gamma_beta.png", "sweep_summary.png",
    }  # fmt: skip
    assert all(p.stat().st_size > 5000 for p in paths)


def _cli(*args):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "bnlab.plot", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_cli_run_and_sweep(tmp_path):
    run = fake_run(tmp_path / "run", norm="bn")
    p = _cli(run)
    assert p.returncode == 0, p.stderr
    printed = [Path(line) for line in p.stdout.split()]
    assert len(printed) == 4
    assert all(f.parent == run / FIGURES and f.stat().st_size > 5000 for f in printed)

    root = fake_sweep(tmp_path / "sweep")
    p = _cli(root, "--target", "0.5")
    assert p.returncode == 0, p.stderr
    printed = [Path(line) for line in p.stdout.split()]
    assert {f.name for f in printed} >= {"drift_layer3_pre.png", "sweep_summary.png"}
    assert all(f.parent == root / FIGURES and f.stat().st_size > 5000 for f in printed)

    p = _cli(tmp_path / "nothing-here")
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_cli_glob_of_runs(tmp_path):
    fake_run(tmp_path / "a", norm="none")
    fake_run(tmp_path / "b", norm="bn")
    p = _cli(str(tmp_path / "*"), "--out", tmp_path / "out", "--target", "none")
    assert p.returncode == 0, p.stderr
    printed = [Path(line) for line in p.stdout.split()]
    assert printed and all(f.parent == tmp_path / "out" for f in printed)
    assert "sweep_summary.png" not in {f.name for f in printed}  # lr does not vary


def test_real_run_figures_loaded(tmp_path):
    """save_run_figures on a record re-read by load_run keeps the run's label."""
    fake_run(tmp_path / "r", norm="bn_noaffine")
    run = load_run(tmp_path / "r")
    assert run.label == "bn_noaffine"
    paths = plot.save_run_figures(run.path)
    assert "gamma_beta.png" not in {p.name for p in paths}


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
