"""Files (bnlab.analysis.report): PNG figures of runs and sweeps, the sweep summary, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_runs import fake_run, fake_sweep

from bnlab.analysis import report
from bnlab.analysis.runs import load_run, load_sweep
from bnlab.record.tables import ACTIVATIONS, FIGURES, SCALARS, RunRecord

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """norm in {none, bn, bn_noaffine} x lr in {0.1, 0.5}."""
    root = fake_sweep(
        tmp_path_factory.mktemp("s") / "sweep", norms=("none", "bn", "bn_noaffine"), lrs=(0.1, 0.5)
    )
    return load_sweep(root)


def test_save_run_figures(tmp_path):
    fake_run(tmp_path / "r", norm="bn")
    paths = report.save_run_figures(tmp_path / "r")
    names = sorted(p.name for p in paths)
    assert names == [
        "drift_layer3_pre.png",
        "gamma_beta.png",
        "layer_moments_pre.png",
        "learning_curves.png",
    ]
    for p in paths:
        assert p.parent == tmp_path / "r" / FIGURES and p.stat().st_size > 5000


def test_figures_of_a_model_with_module_path_sites(tmp_path):
    """A ResNet's sites (``stage1/block1/norm1/in|out``, no ``pre``): the drift figure
    shows the last norm layer's input (``in``: what drifts), also when a conv's input
    comes after it in the network; the mean/std figure 8 of its 12 norm layers."""
    rng = np.random.default_rng(0)
    steps = np.arange(0, 201, 50)
    norms = [f"stage{s}/block{b}/norm{n}" for s in (1, 2, 3) for b in (1, 2) for n in (1, 2)]
    keys = ("mean", "std", "p15", "p50", "p85")
    sites = [f"{layer}/{site}" for layer in norms for site in ("in", "out")]
    sites.append("stage3/block2/conv2/in")
    acts = {s: {k: rng.standard_normal(len(steps)) for k in keys} for s in sites}
    rec = RunRecord(tmp_path / "r")
    rec.activations(steps, acts)
    rec.scalars(steps[1:], "train_loss", np.ones(len(steps) - 1))
    rec.write_tables()
    rec.write_summary(status="finished", step=200, steps=200, final={})
    got = pd.read_parquet(tmp_path / "r" / ACTIVATIONS)
    assert report.drift_site(got) == ("stage3/block2/norm2", "in")
    assert report.drift_site(got, "out") == ("stage3/block2/norm2", "out")
    no_norm = got[got["layer"] == "stage3/block2/conv2"]
    assert report.drift_site(no_norm) == ("stage3/block2/conv2", "in")  # a hidden layer's input
    kept = report.moment_layers(got[got["site"] == "out"])["layer"].unique()
    assert len(kept) == report.MOMENT_LAYERS and {norms[0], norms[-1]} <= set(kept)
    names = {p.name for p in report.save_run_figures(tmp_path / "r")}
    assert {"drift_stage3_block2_norm2_in.png", "layer_moments_in.png"} <= names
    p = _cli(tmp_path / "r", "--site", "out", "--out", tmp_path / "figs")
    assert p.returncode == 0, p.stderr
    assert "drift_stage3_block2_norm2_out.png" in p.stdout


def test_save_run_figures_diverged_and_empty(tmp_path):
    # diverged after one probe interval: few rows, no gamma/beta (norm=none)
    fake_run(tmp_path / "d", norm="none", status="diverged", diverged_at=2, steps=200)
    paths = report.save_run_figures(tmp_path / "d")
    # (the step-0 test accuracy still makes a learning-curve figure)
    assert {p.name for p in paths} == {
        "drift_layer3_pre.png", "layer_moments_pre.png", "learning_curves.png",
    }  # fmt: skip
    # empty tables (diverged on the first step before any rows): no figures, no error
    e = tmp_path / "e"
    rec = RunRecord(e)
    rec.write_tables()
    rec.write_summary(status="diverged", step=1, steps=100, diverged_at=1, final={})
    assert report.save_run_figures(e) == []
    # tables missing altogether
    (e / ACTIVATIONS).unlink()
    (e / SCALARS).unlink()
    assert report.save_run_figures(e) == []


def test_save_sweep_figures(sweep, tmp_path):
    paths = report.save_sweep_figures(sweep, tmp_path / "figs")
    assert {p.name for p in paths} == {
        "drift_layer3_pre.png", "layer_moments_pre.png", "learning_curves.png",
        "gamma_beta.png", "sweep_summary.png",
    }  # fmt: skip
    assert all(p.stat().st_size > 5000 for p in paths)


def _cli(*args):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "bnlab.report", *map(str, args)],
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
    paths = report.save_run_figures(run.path)
    assert "gamma_beta.png" not in {p.name for p in paths}


def test_write_summary_table_and_figures(tmp_path):
    """The end-of-sweep summary: summary.csv/.parquet (one row per run, seed included)
    and every figure; with figures=False only the sweep summary plot."""
    root = fake_sweep(tmp_path / "s", lrs=(0.1, 0.5), seeds=range(2))
    paths = report.write_summary(root)
    names = {p.name for p in paths}
    assert {report.SUMMARY_CSV, report.SUMMARY_PARQUET, report.SWEEP_PNG} <= names
    assert "learning_curves.png" in names
    table = pd.read_csv(root / report.SUMMARY_CSV)
    assert len(table) == 8 and list(table["seed"]) == [0, 1] * 4
    assert pd.read_parquet(root / report.SUMMARY_PARQUET)["label"].nunique() == 4
    other = fake_sweep(tmp_path / "t", lrs=(0.1, 0.5))
    paths = report.write_summary(other, figures=False)
    assert [p.name for p in paths] == [report.SUMMARY_CSV, report.SUMMARY_PARQUET, report.SWEEP_PNG]
    assert sorted(p.name for p in (other / FIGURES).iterdir()) == [report.SWEEP_PNG]


def test_swept_key_is_never_the_seed(tmp_path):
    only_seeds = load_sweep(fake_sweep(tmp_path / "a", norms=("bn",), lrs=(0.5,), seeds=range(3)))
    assert only_seeds.varying == ["seed"] and report.swept_key(only_seeds) is None
    lr_and_seeds = load_sweep(fake_sweep(tmp_path / "b", norms=("bn",), seeds=range(2)))
    assert report.swept_key(lr_and_seeds) == "optimizer.lr"
    paths = report.save_sweep_figures(only_seeds, tmp_path / "figs")
    assert report.SWEEP_PNG not in {p.name for p in paths}


def test_two_sweeps_plotted_together_keep_every_run(tmp_path):
    """Sweeps over different keys plotted together: a run without the x key is named,
    never dropped silently; --x and --hue choose the axes."""
    import warnings

    from bnlab.analysis import plot
    from bnlab.analysis.runs import load_sweep

    fake_sweep(tmp_path / "a", norms=("none", "bn"), lrs=(0.1, 0.5))  # 4 runs over the lr
    for i, width in enumerate((16, 32, 64)):  # 3 runs over a model key
        fake_run(tmp_path / "b" / str(i), overrides=[f"model.flat_features={width}"])
    sweep = load_sweep([tmp_path / "a" / "*", tmp_path / "b" / "*"])
    assert len(sweep.runs) == 7
    with pytest.warns(UserWarning, match=r"4 of 7 runs have no model.flat_features"):
        fig = plot.sweep_summary(sweep.runs, x="model.flat_features")
    assert "3 of 7 runs (4 without model.flat_features)" in fig._suptitle.get_text().replace(
        "\n", " "
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every run has the lr: none left out
        fig = plot.sweep_summary(sweep.runs, x="optimizer.lr", hue="norm")
    assert fig._suptitle.get_text().endswith(": 7 runs")
    p = _cli(tmp_path / "a" / "*", tmp_path / "b" / "*", "--x", "optimizer.lr", "--hue", "norm",
             "--out", tmp_path / "figs")  # fmt: skip
    assert p.returncode == 0 and "sweep_summary.png" in p.stdout, p.stderr
    assert "have no" not in p.stderr
    bad = _cli(tmp_path / "a", "--x", "no.such", "--out", tmp_path / "figs")
    assert bad.returncode == 2 and "no key 'no.such'" in bad.stderr


def test_panels_follow_the_order_the_run_recorded(tmp_path):
    """A model whose layers' names do not sort in network order: summary.json's
    ``sites`` (call order) orders the mean/std panels and picks the last norm layer."""
    from bnlab.analysis import plot
    from bnlab.analysis.runs import layer_order, network_order

    sites = ["m_norm/in", "m_norm/out", "a_second/in", "b_norm/in", "b_norm/out", "head/in"]
    assert network_order([{"sites": sites}]) == ["m_norm", "a_second", "b_norm", "head"]
    assert layer_order(["head", "a_second", "m_norm", "x"], ["m_norm", "a_second", "head"]) == [
        "m_norm", "a_second", "head", "x"
    ]  # fmt: skip
    steps = np.arange(0, 101, 50)
    rng = np.random.default_rng(0)
    stats = ("mean", "std", "p15", "p50", "p85")
    rec = RunRecord(tmp_path / "r")
    rec.activations(steps, {s: {k: rng.standard_normal(3) for k in stats} for s in sorted(sites)})
    rec.write_tables()
    rec.write_summary(status="finished", step=100, steps=100, final={}, sites=sites)
    acts = load_sweep([tmp_path / "r"]).activations
    assert acts.attrs["layer_order"] == ["m_norm", "a_second", "b_norm", "head"]
    assert report.drift_site(acts) == ("b_norm", "in")
    fig = plot.layer_moments(acts[acts["site"] == "in"], "in")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split("/")[0] for t in titles[:4]] == ["m_norm", "a_second", "b_norm", "head"]
