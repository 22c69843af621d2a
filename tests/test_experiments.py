"""Every reproduction in experiments/ runs end to end in its smoke configuration."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from trainer import COMPILE_CACHE, ROOT

from bnlab.analysis.runs import load_sweep

EXPERIMENTS = {
    "ioffe2015_fig1": [
        "test_accuracy.png", "lr_sweep.png", "drift_layer3_pooled.png", "drift_layer3_units.png",
    ],
    "ioffe2015_sec2_statgrad": ["bias_and_weights.png", "learning_curves.png", "lr_sweep.png"],
    "santurkar2018": [
        f"{kind}_mlp.png"
        for kind in ("accuracy", "lr_sweep", "drift", "moments", "ics", "ics_vs_lr", "landscape_vs_lr")
    ] + ["landscape.png"],
    "lr_tolerance": ["lr_sweep.png", "depth_std.png", "depth_std_early.png"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_smoke(name, tmp_path):
    """--smoke: 2 seeds x 2 lrs in one vectorized job per group (one norm variant each,
    so one compile per group), aggregated with intervals into summary.csv, results.md
    and figures with bands."""
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
    assert len(summary) >= 4 and "final_test_accuracy" in summary
    assert summary["seed"].nunique() == 2 and summary["lr"].nunique() == 2
    results = (tmp_path / "results.md").read_text()
    assert "(n=2, min-max)" in results and "best lr on validation" in results.lower()
    sweep = load_sweep(tmp_path / "runs", warn=False)
    assert set(sweep.runs["status"]) <= {"finished", "diverged"}
    assert "final_val_accuracy" in sweep.runs
    if name == "santurkar2018":  # the ICS table is written and read back
        ics = sweep.ics
        assert {
            "grad_diff_l2",
            "grad_diff_rel",
            "grad_cos",
            "loss_range",
            "beta_smoothness",
        } <= set(ics["stat"])
        first = ics[(ics["layer"] == "layer1") & (ics["stat"] == "grad_diff_l2")]
        assert len(first) and (first["value"] == 0).all()
        assert set(summary["model"]) == {"mlp"}  # the CNN: --cnn
        assert set(summary["norm"]) <= {"none", "bn", "bn_noisy"}
