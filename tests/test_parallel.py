"""Multi-device training on 4 simulated CPU devices: one step equals one device's, a
real run equals a single-device run, and every combination of sweep axes, device
layouts, probe placement and BN variants gives each member the single run's record.

The 4-device checks run in subprocesses (tests/parallel_check.py) with
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
from trainer import QUICK, ROOT, tables, train

from bnlab.errors import UserError

TOL = 1e-5  # the tolerance for 4 devices vs one on the same 64 examples


def _check(out: Path, what: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "parallel_check.py"), str(out), what],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")  # session: not rebuilt when xdist interleaves modules
def four_devices(tmp_path_factory) -> dict:
    return _check(tmp_path_factory.mktemp("parallel"), "step")


@pytest.fixture(scope="session")
def combos(tmp_path_factory) -> dict:
    return _check(tmp_path_factory.mktemp("combos"), "combos")["combos"]


def _summary(errs: dict) -> str:
    keys = ("outputs", "running_stats", "grads", "loss", "params_after_step")
    return ", ".join(f"{k} {errs[k]:.1e}" for k in keys)


@pytest.mark.xdist_group("parallel_step")
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_sync_bn_equals_single_device_bn(four_devices, model, record_property):
    """Sync BN on 4 devices x 16 = single-device BN on the 64: outputs, running stats,
    gradients (and the loss and the updated params) of one training step."""
    errs = four_devices["step"][f"{model}_sync"]
    record_property("summary", f"sync BN 4 devices vs 1, max abs error: {_summary(errs)}")
    for k in ("outputs", "running_stats", "grads", "loss", "params_after_step"):
        assert errs[k] < TOL, (k, errs[k])
    assert errs["running_stats_moved"] > 1e-3
    assert errs["outputs_vs_other_stats"] > 1e-3  # ghost-16 statistics would differ


@pytest.mark.xdist_group("parallel_step")
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_unsynced_bn_equals_ghost_bn(four_devices, model, record_property):
    """Per-device BN on 4 devices x 16 = single-device ghost BN with ghost batch 16;
    the per-device running-stat updates are averaged into ghost BN's one update."""
    errs = four_devices["step"][f"{model}_unsync"]
    record_property(
        "summary", f"unsynced BN 4 devices vs ghost 16, max abs error: {_summary(errs)}"
    )
    for k in ("outputs", "running_stats", "grads", "loss", "params_after_step"):
        assert errs[k] < TOL, (k, errs[k])
    assert errs["running_stats_moved"] > 1e-3
    assert errs["outputs_vs_other_stats"] > 1e-3  # whole-batch statistics would differ


@pytest.mark.xdist_group("parallel_step")
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
        np.testing.assert_allclose(a["value"], b["value"], rtol=TOL, atol=TOL, err_msg=name)
    s4, s1 = (json.loads((runs[k] / "summary.json").read_text()) for k in ("4", "1"))
    assert s4.keys() == s1.keys()
    assert (s4["devices"], s1["devices"]) == (4, 1)
    assert s4["status"] == s1["status"] == "finished"


COMBO_NAMES = [
    "lr_seeds_overlap_ics_noisy", "lr_seeds_data4_ics_noisy", "seeds_members2_data2_ics_noisy",
    "lr_members4_ghost_diverging", "lr_seeds_members2_data2_ghost", "single_data4_ghost_overlap",
    "target_nnx_lr_members2_data2",
]  # fmt: skip


@pytest.mark.xdist_group("parallel_combos")
@pytest.mark.parametrize("name", COMBO_NAMES)
def test_every_member_equals_its_single_run(combos, name, record_property):
    """Each member of the combination (a sweep on a device layout, with ICS probes,
    probes beside training, noisy or ghost BN) equals the single run with its settings
    on one device, on every table (rtol = atol = 1e-5), and ends with its status."""
    worst = 0.0
    for member, single, status in combos[name]:
        a, b = tables(Path(member)), tables(Path(single))
        assert a.keys() == b.keys()
        for t in a:
            keys = [c for c in a[t].columns if c != "value"]
            pd.testing.assert_frame_equal(a[t][keys], b[t][keys], obj=f"{name}/{t}")
            np.testing.assert_allclose(a[t]["value"], b[t]["value"], rtol=TOL, atol=TOL,
                                       err_msg=f"{name}: {member} vs {single}, {t}")  # fmt: skip
            diff = np.abs(a[t]["value"].to_numpy() - b[t]["value"].to_numpy())
            worst = max(worst, float(np.nanmax(diff, initial=0.0)))
        sa = json.loads((Path(member) / "summary.json").read_text())
        sb = json.loads((Path(single) / "summary.json").read_text())
        assert status == sa["status"] == sb["status"]
        assert sa["diverged_at"] == sb["diverged_at"]
    record_property("summary", f"{name}: {len(combos[name])} members, max abs diff {worst:.1e}")


def test_devices_beyond_the_machine_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="parallel.data=64 x parallel.members=1 asks for more"):
        train([*QUICK, "parallel.data=64"], tmp_path)
    with pytest.raises(UserError, match="batch_size=62 must be divisible by parallel.data=4"):
        from trainer import compose

        from bnlab import config

        config.check(config.typed(compose([*QUICK, "batch_size=62", "parallel.data=4"])), 4)
