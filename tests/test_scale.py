"""Defaults that scale down, and a record that reports itself honestly (issue 23)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from trainer import COMPILE_CACHE, cli, compose, train

from bnlab import config
from bnlab.config.scale import MIN_POINTS, eval_every, probe_every
from bnlab.data.preprocess import auto_probe_size

SMALL = ["data=digits", "progress=false", "figure=false", f"compile_cache={COMPILE_CACHE}"]


@pytest.mark.parametrize("steps", [20, 100, 300, 1000, 12345, 50000])
def test_auto_intervals_leave_at_least_ten_points(steps):
    every = probe_every(steps)
    assert steps % every == 0 and steps // every >= MIN_POINTS
    ev = eval_every(steps, every)
    assert ev % every == 0 and steps // ev >= MIN_POINTS
    if steps == 50000:  # the paper's run keeps the paper's intervals
        assert (every, ev) == (50, 1000)


def test_steps_300_on_the_defaults_gives_ten_evaluations():
    cfg = config.typed(compose(["data=digits", "steps=300"]))
    config.check(cfg, 1)
    assert cfg.steps // cfg.eval_every >= 10 and cfg.steps // cfg.probe.every >= 10
    assert cfg.checkpoint_every == 300  # past the end: at the end, without a notice
    set_ = config.typed(compose(["data=digits", "steps=300", "probe.every=50", "eval_every=100"]))
    config.check(set_, 1)
    assert (set_.probe.every, set_.eval_every) == (50, 100)  # what is set is used


@pytest.mark.parametrize(
    ("split", "multiple", "size"),
    [(10000, 1, 1000), (297, 1, 297), (297, 20, 280), (200, 1, 200), (210, 20, 200), (7, 20, 7)],
)
def test_auto_probe_size(split, multiple, size):
    assert auto_probe_size(split, multiple) == size


def test_ghost_bn_on_small_arrays_runs_with_defaults(tmp_path):
    """data=arrays with a 210-example test split and ghost BN: the probe batch is 200."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(610, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:])
    over = [*SMALL, "data=arrays", f"data.path={tmp_path / 'd.npz'}", "norm=bn_ghost",
            "steps=20", "model.features=[16]"]  # fmt: skip
    (s,) = train(over, tmp_path / "run")
    assert s["status"] == "finished"
    acts = pd.read_parquet(tmp_path / "run" / "activations.parquet")
    assert acts["step"].nunique() == 11  # step 0 and every 2 steps


def test_a_short_ghost_run_is_recorded_honestly(tmp_path):
    """steps=300 norm=bn_ghost data=digits on the defaults: >= 10 evaluations; the
    summary's wall time is the process's (within 20%), chunk_steps what ran, and
    train.log holds the lines the run printed."""
    run = tmp_path / "run"
    t0 = time.perf_counter()
    res = cli([*SMALL, "steps=300", "norm=bn_ghost", f"hydra.run.dir={run}"])
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert "probe batch 280" in res.stderr
    s = json.loads((run / "summary.json").read_text())
    assert 0.8 * wall <= s["wall_time_s"] <= wall
    assert s["chunk_steps"] <= 300
    sc = pd.read_parquet(run / "scalars.parquet")
    assert sc[sc["name"] == "test_accuracy"]["step"].nunique() >= 10
    log = (run / "train.log").read_text()
    assert "probe batch 280" in log and "finished 300 steps" in log


def test_a_multirun_with_a_bad_job_starts_none(tmp_path):
    sweep = tmp_path / "m"
    res = cli(["-m", *SMALL, "steps=100", "norm=bn,bn_ghost", "norm.ghost_batch_size=7",
               f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("bnlab: error:")]
    assert len(err) == 1 and "job 0 of 2" in err[0] and "norm=bn " in err[0], res.stderr
    assert "no job was started" in err[0] and not sweep.exists()


def test_a_multirun_that_fails_keeps_the_summary_of_the_jobs_that_ran(tmp_path):
    sweep = tmp_path / "m"
    res = cli(["-m", *SMALL, "steps=50", "batch_size=60,3000", f"hydra.sweep.dir={sweep}"])
    assert res.returncode == 2
    assert "batch_size=3000 exceeds the 1500 training examples" in res.stderr
    table = pd.read_csv(sweep / "summary.csv")
    assert list(table["status"]) == ["finished"]


def test_a_run_continued_with_more_steps_keeps_its_auto_intervals(tmp_path):
    """probe.every and eval_every left at auto keep the values of the record they
    continue (a finished run asked for more steps is not refused for new intervals)."""
    run = tmp_path / "run"
    over = [*SMALL, "chunk_steps=100"]
    (s,) = train([*over, "steps=100"], run)  # auto: probes every 10 steps
    assert s["status"] == "finished"
    (s,) = train([*over, "steps=200"], run)  # auto alone would probe every 20
    assert s["status"] == "finished" and s["step"] == 200
    steps = sorted(pd.read_parquet(run / "activations.parquet")["step"].unique())
    assert steps == list(range(0, 201, 10))
