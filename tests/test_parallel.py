"""Data-parallel training (bnlab.parallel) on 4 simulated CPU devices.

The 4-device checks run in one subprocess (tests/parallel_check.py) with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: the flag only takes effect
before JAX starts, and this process already has one CPU device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trainer import QUICK, ROOT, compose, tables

from bnlab import loop, parallel
from bnlab.console import UserError
from bnlab.train import train_and_evaluate

TOL = 1e-5  # the tolerance for 4 devices vs one on the same 64 examples


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parallel")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "parallel_check.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _summary(errs: dict) -> str:
    keys = ("outputs", "running_stats", "grads", "loss", "params_after_step")
    return ", ".join(f"{k} {errs[k]:.1e}" for k in keys)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_sync_bn_equals_single_device_bn(four_devices, model, record_property):
    """Sync BN on 4 devices x 16 = single-device BN on the 64: outputs, running stats,
    gradients (and the loss and the updated params) of one training step."""
    errs = four_devices[f"{model}_sync"]
    record_property("summary", f"sync BN 4 devices vs 1, max abs error: {_summary(errs)}")
    for k in ("outputs", "running_stats", "grads", "loss", "params_after_step"):
        assert errs[k] < TOL, (k, errs[k])
    assert errs["running_stats_moved"] > 1e-3
    assert errs["outputs_vs_other_stats"] > 1e-3  # ghost-16 statistics would differ


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_unsynced_bn_equals_ghost_bn(four_devices, model, record_property):
    """Per-device BN on 4 devices x 16 = single-device ghost BN with ghost batch 16;
    the per-device running-stat updates are averaged into ghost BN's one update."""
    errs = four_devices[f"{model}_unsync"]
    record_property(
        "summary", f"unsynced BN 4 devices vs ghost 16, max abs error: {_summary(errs)}"
    )
    for k in ("outputs", "running_stats", "grads", "loss", "params_after_step"):
        assert errs[k] < TOL, (k, errs[k])
    assert errs["running_stats_moved"] > 1e-3
    assert errs["outputs_vs_other_stats"] > 1e-3  # whole-batch statistics would differ


def test_auto_uses_all_local_devices(four_devices):
    assert four_devices["auto_devices"] == 4


def test_four_device_run_has_single_device_record(four_devices, record_property):
    """A real run on 4 devices (sync BN): the same record schema, the same rows and,
    within float tolerance, the same numbers as the single-device run; only the
    summary's ``devices`` tells them apart."""
    runs = {k: Path(v) for k, v in four_devices["runs"].items()}
    t4, t1 = tables(runs["4"]), tables(runs["1"])
    for name in t1:
        a, b = t4[name], t1[name]
        assert list(a.columns) == list(b.columns) and (a.dtypes == b.dtypes).all(), name
        keys = [c for c in a.columns if c != "value"]
        pd.testing.assert_frame_equal(a[keys], b[keys])
        np.testing.assert_allclose(a["value"], b["value"], rtol=1e-4, atol=1e-4, err_msg=name)
    loss = {
        k: t[t["name"] == "train_loss"]["value"].to_numpy()
        for k, t in (("4", t4["scalars.parquet"]), ("1", t1["scalars.parquet"]))
    }
    diff = float(np.max(np.abs(loss["4"] - loss["1"])))
    record_property("summary", f"train-loss curve, 4 devices vs 1: max abs diff {diff:.1e}")
    assert len(loss["1"]) == 4 and diff < 1e-5
    s4, s1 = (json.loads((runs[k] / "summary.json").read_text()) for k in ("4", "1"))
    assert s4.keys() == s1.keys()
    assert (s4["devices"], s1["devices"]) == (4, 1)
    assert s4["status"] == s1["status"] == "finished"


def test_uneven_batch_is_a_one_line_error():
    cfg = compose([*QUICK, "batch_size=62"])
    tx, sched = loop.make_optimizer(cfg.optimizer, cfg.steps)
    with pytest.raises(ValueError, match="batch_size=62 must be divisible by parallel.data=4"):
        parallel.make_trainer(
            cfg.model, cfg.norm, None, tx, sched, devices=4,
            batch_size=62, chunk_steps=cfg.chunk_steps, probe_cfg=cfg.probe,
        )  # fmt: skip
    ghost = compose([*QUICK, "batch_size=64", "norm=bn_ghost", "norm.ghost_batch_size=32"])
    with pytest.raises(ValueError, match="must divide the per-device batch 16"):
        parallel.make_trainer(
            ghost.model, ghost.norm, None, tx, sched, devices=4,
            batch_size=64, chunk_steps=cfg.chunk_steps, probe_cfg=cfg.probe,
        )  # fmt: skip


def test_more_devices_than_present_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="parallel.data=64 asks for more devices"):
        train_and_evaluate(compose([*QUICK, "parallel.data=64"]), tmp_path)
