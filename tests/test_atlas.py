"""The normalization atlas end to end at its tiny scale (2 models x 3 normalizers x
2 lrs x 2 seeds, 200 steps) through hydra/launcher=parallel and through a real local
Ray head with 2 workers, and its verdicts recomputed from the per-seed table it wrote."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import test_launchers
from trainer import COMPILE_CACHE, ROOT

sys.path.insert(0, str(ROOT / "experiments" / "atlas"))
import report  # noqa: E402

ray_head = test_launchers.ray_head  # the local Ray head fixture (tests/test_launchers.py)


def _atlas(out, *args, env=None):
    """The tiny atlas into ``out``; returns its report folder."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "atlas" / "run.py"), "--scale", "tiny",
         "--out", str(out), "--compile-cache", str(COMPILE_CACHE), "--fast-compile", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out / "report" / "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _atlas(tmp_path_factory.mktemp("atlas"))


def check_report(tiny):
    ps = pd.read_csv(tiny / "per_seed.csv")
    assert len(ps) == 2 * 3 * 2 * 2
    assert set(ps["model"]) == {"relu_mlp", "cnn"} and set(ps["norm"]) == {
        "none",
        "bn",
        "layer_norm",
    }
    assert ps[["drift", "grad_ics", "steps_to_target"]].notna().all().all()
    eff = pd.read_csv(tiny / "verdicts.csv")
    assert len(eff) == 2 * 2 * len(report.CLAIMS)
    assert set(eff["verdict"]) <= {"holds", "differs", "depends on lr", "n/a"}
    md = (tiny / "report.md").read_text()
    assert "![overview](figures/atlas.png)" in md and "(n=2, min-max)" in md
    page = (tiny / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table" in page and "src='figures" not in page
    assert (tiny / "figures" / "atlas.png").stat().st_size > 10_000


@pytest.mark.slow
def test_tiny_atlas_through_parallel_writes_the_report(tiny):
    check_report(tiny)


@pytest.mark.slow
def test_tiny_atlas_through_a_ray_head(tmp_path, request, tiny):
    """The same atlas through ``--launcher ray_cluster`` on a running local Ray head
    (2 worker CPUs, token authentication): the same records, the same report."""
    out = _atlas(tmp_path, "--launcher", "ray_cluster", env=request.getfixturevalue("ray_head"))
    check_report(out)
    a, b = (pd.read_csv(d / "per_seed.csv") for d in (out, tiny))
    assert list(a["status"]) == list(b["status"])


@pytest.mark.slow
def test_verdicts_recompute_from_the_per_seed_table(tiny):
    ps = pd.read_csv(tiny / "per_seed.csv")
    again = report.verdicts(ps)
    written = pd.read_csv(tiny / "verdicts.csv")
    assert list(again["verdict"]) == list(written["verdict"])
    pd.testing.assert_frame_equal(
        again[["effect", "lo", "hi"]].astype(float), written[["effect", "lo", "hi"]],
        rtol=1e-5, check_exact=False,
    )  # fmt: skip


CPU = ROOT / "experiments" / "atlas" / "report" / "cpu"  # the committed CPU-scale atlas


def test_the_committed_cpu_atlas_recomputes_from_its_per_seed_tables():
    """Every verdict, effect and interval, every summary cell and every per-layer drift
    cell of the committed CPU-scale report comes out of its committed per-seed tables."""
    ps = pd.read_csv(CPU / "per_seed.csv")
    assert len(ps) == 3 * 8 * 6 * 5  # models x normalizers x lrs x seeds
    again, written = report.verdicts(ps), pd.read_csv(CPU / "verdicts.csv")
    assert list(again["verdict"]) == list(written["verdict"])
    pd.testing.assert_frame_equal(
        again[["effect", "lo", "hi"]].astype(float), written[["effect", "lo", "hi"]],
        rtol=1e-5, check_exact=False,
    )  # fmt: skip
    summ = pd.read_csv(CPU / "summary.csv").astype(str)
    pd.testing.assert_frame_equal(report.summary(ps).astype(str), summ)
    md = (CPU / "report.md").read_text()
    for model, t in report.layer_tables(pd.read_csv(CPU / "per_layer.csv"), ps).items():
        assert report._md_table(t) in md, model


def _table(values: dict[tuple[str, float], list[float]], col: str) -> pd.DataFrame:
    """A per-seed table of one model where only ``col`` differs between norms and lrs."""
    rows = []
    for (norm, lr), vs in values.items():
        for seed, v in enumerate(vs):
            rows.append(dict(model="m", norm=norm, lr=lr, seed=seed, status="finished",
                             val_accuracy=0.9, test_accuracy=0.9, steps_to_target=100.0,
                             drift=1.0, grad_ics=1.0, loss_range=1.0, grad_predictiveness=1.0,
                             beta_smoothness=1.0, sharpness=1.0) | {col: v})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("values", "verdict"), [
    # BN's inputs drift less at every lr: holds
    ({("none", 0.1): [1.0, 1.1, 1.2, 1.0, 1.1], ("bn", 0.1): [0.2, 0.3, 0.2, 0.25, 0.3],
      ("none", 1.0): [1.0, 1.1, 1.2, 1.0, 1.1], ("bn", 1.0): [0.2, 0.3, 0.2, 0.25, 0.3]}, "holds"),
    # less at one lr, more at the other: depends on lr
    ({("none", 0.1): [1.0, 1.1, 1.2, 1.0, 1.1], ("bn", 0.1): [0.2, 0.3, 0.2, 0.25, 0.3],
      ("none", 1.0): [1.0, 1.1, 1.2, 1.0, 1.1], ("bn", 1.0): [2.2, 2.3, 2.2, 2.25, 2.3]},
     "depends on lr"),
    # no difference beyond the seeds' spread: differs
    ({("none", 0.1): [1.0, 1.1, 1.2, 1.0, 1.1], ("bn", 0.1): [1.1, 1.0, 1.1, 1.2, 1.0],
      ("none", 1.0): [1.0, 1.1, 1.2, 1.0, 1.1], ("bn", 1.0): [1.1, 1.0, 1.1, 1.2, 1.0]}, "differs"),
])  # fmt: skip
def test_verdict_rules_on_a_hand_made_table(values, verdict):
    eff = report.verdicts(_table(values, "drift"))
    row = eff[eff["claim"] == "less input drift"].iloc[0]
    assert row["verdict"] == verdict and row["n"] == 5 and row["method"] == "t"


def test_landscape_claims_compare_both_at_nones_best_lr():
    """Sharpness scales with the lr: the claim compares BN and none at none's best lr
    (0.1 here), not BN at its own best lr (1.0), where its sharpness is higher."""
    t = _table({("none", 0.1): [5.0, 5.1, 5.2, 5.0, 5.1], ("bn", 0.1): [1.0, 1.1, 1.0, 1.2, 1.1],
                ("none", 1.0): [5.0, 5.1, 5.2, 5.0, 5.1], ("bn", 1.0): [9.0, 9.1, 9.0, 9.2, 9.1]},
               "sharpness")  # fmt: skip
    t.loc[(t["norm"] == "none") & (t["lr"] == 1.0), "val_accuracy"] = 0.5  # none's best: 0.1
    t.loc[(t["norm"] == "bn") & (t["lr"] == 0.1), "val_accuracy"] = 0.8  # bn's best: 1.0
    row = report.verdicts(t).set_index("claim").loc["lower sharpness"]
    assert row["at"] == "same" and row["effect"] == pytest.approx(-4.0, abs=0.01)
    assert row["verdict"] == "depends on lr"  # lower at 0.1, higher at 1.0
