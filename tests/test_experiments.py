"""Every reproduction in experiments/ runs end to end in its smoke configuration."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from trainer import COMPILE_CACHE, ROOT

from bnlab.runs import load_sweep

EXPERIMENTS = {
    "ioffe2015_fig1": ["test_accuracy.png", "drift_layer3_unit0.png", "drift_layer3_pooled.png"],
    "ioffe2015_sec2_statgrad": ["bias_and_weights.png", "learning_curves.png"],
    "santurkar2018": [
        "accuracy_mlp.png", "accuracy_cnn.png", "drift_mlp.png", "drift_cnn.png",
        "moments_mlp.png", "moments_cnn.png", "ics_mlp.png", "ics_cnn.png", "landscape.png",
    ],
    "lr_tolerance": ["lr_sweep.png", "depth_std.png"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_smoke(name, tmp_path):
    res = subprocess.run(
        [
            sys.executable, str(ROOT / "experiments" / name / "run.py"), "--smoke",
            "--out", str(tmp_path), "--compile-cache", str(COMPILE_CACHE),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    for fig in EXPERIMENTS[name]:
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000, fig
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) >= 3 and "final_test_accuracy" in summary
    sweep = load_sweep(tmp_path / "runs", warn=False)
    assert set(sweep.runs["status"]) <= {"finished", "diverged"}
    if name == "santurkar2018":  # the ICS table is written and read back
        ics = sweep.ics
        assert {"grad_diff_l2", "grad_cos", "loss_range", "beta_smoothness"} <= set(ics["stat"])
        first = ics[(ics["layer"] == "layer1") & (ics["stat"] == "grad_diff_l2")]
        assert len(first) and (first["value"] == 0).all()
        assert set(summary["norm"]) == {"none", "bn", "bn_noisy"}
