"""The loader: runs and sweeps back into pandas (bnlab.analysis.runs).

Unit tests use run records written here through :class:`bnlab.record.tables.RunRecord`
(the schema's own writer); the sweep test at the end trains a real 2x2 multirun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bnlab.analysis.runs import (
    RunProblemWarning,
    find_runs,
    last_hidden_layer,
    load_run,
    load_sweep,
    steps_to_target,
)
from bnlab.record.tables import ACTIVATIONS, LAYERS, SCALARS, SUMMARY, RunRecord

ROOT = Path(__file__).resolve().parents[1]


def fake_run(
    path: Path,
    *,
    norm: str = "bn",
    lr: float = 0.5,
    steps: int = 200,
    every: int = 50,
    n_layers: int = 3,
    status: str = "finished",
    diverged_at: int | None = None,
    overrides: list[str] | None = None,
    seed: int = 0,
    acc_offset: float = 0.0,
    own: bool = False,
) -> Path:
    """A run record in the schema of bnlab.record.tables, with plausible synthetic values;
    ``own``: a user's model's sites (``BatchNorm_{i}/in|out`` by module path, and the
    head's input ``head/in`` last) instead of the preset's ``layer{i}/pre|post``."""
    rng = np.random.default_rng(seed)
    rec = RunRecord(path)
    last = diverged_at - 1 if diverged_at else steps
    probe_steps = np.arange(0, last + 1, every)
    probe_steps = probe_steps[probe_steps <= last]
    t = probe_steps / max(steps, 1)
    acts = {}
    lay = {}
    for i in range(1, n_layers + 1):
        shift = 0.0 if norm != "none" else 2.0 * t * i
        for site, (m, s) in {"pre": (shift, 1.0 + t), "post": (0.5, 0.2 + 0.1 * t)}.items():
            stats = {"mean": m + 0 * t, "std": s + 0 * t}
            for q, z in ((15, -1.04), (50, 0.0), (85, 1.04)):
                stats[f"p{q}"] = m + z * s + 0.01 * rng.standard_normal(len(t))
            stats.update({f"u0/{k}": v * 1.1 for k, v in list(stats.items())})
            name = f"BatchNorm_{i - 1}/" + {"pre": "in", "post": "out"}[site] if own else None
            acts[name or f"layer{i}/{site}"] = stats
        d = {"weight_norm": 1 + t, "grad_norm": 0.1 + 0 * t}
        if norm in ("bn", "bn_nostatgrad", "bn_ghost"):
            d.update(
                gamma_mean=1 + 0.2 * t, gamma_std=0.1 * t, beta_mean=-0.1 * t, beta_std=0.05 * t
            )
        lay[f"BatchNorm_{i - 1}" if own else f"layer{i}"] = d
    if own:
        acts["head/in"] = acts[f"BatchNorm_{n_layers - 1}/out"]
    rec.activations(probe_steps, acts)
    rec.layers(probe_steps, lay)
    train_steps = probe_steps[probe_steps > 0]
    if len(train_steps):
        rec.scalars(train_steps, "train_loss", 2.3 * np.exp(-3 * train_steps / steps))
        rec.scalars(train_steps, "train_accuracy", 1 - 0.9 * np.exp(-3 * train_steps / steps))
        rec.scalars(train_steps, "lr", np.full(len(train_steps), lr))
    eval_steps = probe_steps[:: max(1, len(probe_steps) // 3)]
    acc = 0.95 - 0.85 * np.exp(-3 * eval_steps / steps) - (0.1 if norm == "none" else 0)
    acc = acc + acc_offset
    rec.scalars(eval_steps, "test_accuracy", acc)
    rec.scalars(eval_steps, "test_loss", 2.3 * np.exp(-2 * eval_steps / steps))
    rec.write_tables()
    rec.write_summary(
        status=status, step=int(diverged_at or steps), steps=steps, diverged_at=diverged_at,
        final=dict(rec.last), steps_per_sec=1000.0, wall_time_s=1.0, devices=1,
        data_source="synthetic",
    )  # fmt: skip
    hyd = path / ".hydra"
    hyd.mkdir(exist_ok=True)
    config = {
        "data": {"name": "digits"},
        "norm": {"name": norm, "use_scale": norm == "bn"},
        "optimizer": {"name": "sgd", "lr": lr},
        "seed": seed,
        "steps": steps,
        **({"model": {"_target_": "my_models.Net"}} if own else {}),
    }
    (hyd / "config.yaml").write_text(yaml.safe_dump(config))
    ovr = overrides if overrides is not None else [f"norm={norm}", f"optimizer.lr={lr}"]
    (hyd / "overrides.yaml").write_text(yaml.safe_dump(ovr))
    return path


# test accuracy offset of each seed in fake_sweep(seeds=...): seeds differ in accuracy
SEED_OFFSETS = (0.0, 0.012, -0.007, 0.004, -0.015, 0.009, -0.002)


def fake_sweep(root: Path, norms=("none", "bn"), lrs=(0.1, 0.5), seeds=None, **kw) -> Path:
    """A multirun directory of fake runs, norm x lr (x seed: ``seed=`` overrides, test
    accuracy shifted by ``SEED_OFFSETS[seed]``), jobs numbered in that order."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for norm in norms:
        for lr in lrs:
            for seed in seeds if seeds is not None else [None]:
                if seed is None:
                    fake_run(root / str(job), norm=norm, lr=lr, **kw)
                else:
                    fake_run(
                        root / str(job), norm=norm, lr=lr, seed=seed,
                        acc_offset=SEED_OFFSETS[seed],
                        overrides=[f"norm={norm}", f"optimizer.lr={lr}", f"seed={seed}"], **kw,
                    )  # fmt: skip
                job += 1
    return root


# --------------------------------------------------------------------------- load_run


def test_load_run_tables_and_config(tmp_path):
    fake_run(tmp_path / "r", norm="bn", lr=0.5)
    run = load_run(tmp_path / "r")
    assert run.status == "finished" and run.problems == []
    assert run.overrides == {"norm": "bn", "optimizer.lr": 0.5}
    assert run.config["norm"]["name"] == "bn"
    assert run.label == "bn"
    assert list(run.scalars.columns) == ["step", "name", "value"]
    assert list(run.activations.columns) == ["step", "layer", "site", "unit", "stat", "value"]
    assert list(run.layers.columns) == ["step", "layer", "stat", "value"]
    assert set(run.scalars["name"]) == {
        "train_loss",
        "train_accuracy",
        "lr",
        "test_loss",
        "test_accuracy",
    }
    assert run.value("optimizer.lr") == 0.5 and run.value("data") == "digits"
    assert last_hidden_layer(run.activations) == "layer3"


def test_load_run_missing_pieces_are_reported(tmp_path):
    fake_run(tmp_path / "r", status="running", steps=200)
    (tmp_path / "r" / LAYERS).unlink()
    with pytest.warns(RunProblemWarning, match="status 'running'"):
        run = load_run(tmp_path / "r")
    assert len(run.layers) == 0 and list(run.layers.columns) == ["step", "layer", "stat", "value"]
    text = " ".join(run.problems)
    assert "running" in text and LAYERS in text
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path)


def test_load_run_warns_on_truncated_table(tmp_path):
    """A truncated parquet file (a copy cut short): a RunProblemWarning naming it, the
    table empty with the schema's columns, the rest of the run loaded."""
    fake_run(tmp_path / "r")
    data = (tmp_path / "r" / ACTIVATIONS).read_bytes()
    (tmp_path / "r" / ACTIVATIONS).write_bytes(data[: len(data) // 2])
    with pytest.warns(RunProblemWarning, match=f"unreadable {ACTIVATIONS}"):
        run = load_run(tmp_path / "r")
    assert any(ACTIVATIONS in p for p in run.problems)
    assert run.activations.empty
    assert list(run.activations.columns) == ["step", "layer", "site", "unit", "stat", "value"]
    assert len(run.scalars) and run.status == "finished"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_run(tmp_path / "r", warn=False).problems == run.problems
    # a sweep announces it once, as its own warning (not once per run as well)
    fake_run(tmp_path / "ok")
    with pytest.warns(RunProblemWarning) as caught:
        load_sweep([tmp_path / "r", tmp_path / "ok"])
    assert len(caught) == 1 and "1 of 2 runs" in str(caught[0].message)


def test_load_run_hydra_only(tmp_path):
    """A job that crashed before writing anything: only .hydra/ exists."""
    (tmp_path / "j" / ".hydra").mkdir(parents=True)
    (tmp_path / "j" / ".hydra" / "overrides.yaml").write_text("- norm=none\n")
    with pytest.warns(RunProblemWarning, match="no summary.json"):
        run = load_run(tmp_path / "j")
    assert run.status == "missing"
    assert any(SUMMARY in p for p in run.problems)
    assert run.scalars.empty and run.activations.empty


# --------------------------------------------------------------------------- load_sweep


def test_load_sweep_fake_2x2(tmp_path):
    root = fake_sweep(tmp_path / "sweep")
    sweep = load_sweep(root)
    assert len(sweep) == 4 and sweep.problems == []
    assert sweep.keys == ["norm", "optimizer.lr"] and sweep.varying == ["norm", "optimizer.lr"]
    r = sweep.runs
    assert list(r["run"]) == ["0", "1", "2", "3"]
    assert list(r["norm"]) == ["none", "none", "bn", "bn"]
    assert list(r["optimizer.lr"]) == [0.1, 0.5, 0.1, 0.5]
    assert pd.api.types.is_float_dtype(r["optimizer.lr"])
    assert list(r["label"]) == [
        "norm=none, optimizer.lr=0.1",
        "norm=none, optimizer.lr=0.5",
        "norm=bn, optimizer.lr=0.1",
        "norm=bn, optimizer.lr=0.5",
    ]
    assert (r["status"] == "finished").all()
    assert r["final_test_accuracy"].notna().all()
    for t in (sweep.scalars, sweep.activations, sweep.layers):
        assert {"run", "norm", "optimizer.lr", "label"} <= set(t.columns)
        assert t["run"].nunique() == 4
    assert list(sweep.activations.columns[:4]) == ["run", "norm", "optimizer.lr", "label"]
    # the layers table of norm=none has no gamma/beta, of bn it does
    g = sweep.layers[sweep.layers["stat"] == "gamma_mean"]
    assert set(g["norm"]) == {"bn"}


def test_labels_norm_only_and_config_fill(tmp_path):
    """Only norm differs -> the norm name; a run without the override gets it from its config."""
    fake_run(tmp_path / "a", norm="none", overrides=["norm=none", "steps=200"])
    fake_run(tmp_path / "b", norm="bn", overrides=["steps=200"])  # default norm, not overridden
    sweep = load_sweep([tmp_path / "a", tmp_path / "b"])
    assert sweep.varying == ["norm"]
    assert list(sweep.runs["label"]) == ["none", "bn"]
    assert list(sweep.runs["norm"]) == ["none", "bn"]
    assert list(sweep.scalars.groupby("run", sort=False)["label"].first()) == ["none", "bn"]


def test_seed_column_in_every_table(tmp_path):
    """``seed`` is a tidy column of runs and of every table: from the override where a
    run has one, else from its resolved config."""
    root = fake_sweep(tmp_path / "s", norms=("bn",), lrs=(0.1,), seeds=(3, 4))
    fake_run(tmp_path / "s" / "2", norm="bn", lr=0.1, seed=7)  # seed only in its config
    sweep = load_sweep(root)
    assert "seed" in sweep.keys and "seed" in sweep.varying and sweep.settings == []
    assert list(sweep.runs["seed"]) == [3, 4, 7]
    assert pd.api.types.is_integer_dtype(sweep.runs["seed"])
    for t in (sweep.scalars, sweep.activations, sweep.layers):
        assert t.groupby("run")["seed"].unique().map(list).to_dict() == {
            "0": [3], "1": [4], "2": [7],
        }  # fmt: skip
    # no run overrides the seed: the column still comes (from the configs), after label
    plain = load_sweep(fake_sweep(tmp_path / "p"))
    assert "seed" not in plain.keys
    assert list(plain.runs["seed"]) == [0, 0, 0, 0]
    for t in (plain.scalars, plain.activations, plain.layers, plain.ics):
        assert list(t.columns[:5]) == ["run", "norm", "optimizer.lr", "label", "seed"]
    assert (plain.scalars["seed"] == 0).all()


def test_labels_name_configurations_not_seeds(tmp_path):
    """Runs that differ only by their seed share a label (the figures average them)."""
    root = fake_sweep(tmp_path / "s", norms=("none", "bn"), lrs=(0.1,), seeds=(0, 1, 2))
    sweep = load_sweep(root)
    assert sweep.varying == ["norm", "seed"] and sweep.settings == ["norm"]
    assert list(sweep.runs["label"]) == ["none"] * 3 + ["bn"] * 3
    assert sweep.runs["run"].nunique() == 6
    both = load_sweep(fake_sweep(tmp_path / "t", lrs=(0.1, 0.5), seeds=(0, 1)))
    assert list(both.runs["label"])[:2] == ["norm=none, optimizer.lr=0.1"] * 2


def test_sweep_aggregate_over_seeds(tmp_path):
    """Sweep.aggregate: final test accuracy per configuration, mean over seeds with a
    95% t interval (5 seeds) or min-max (3 seeds), diverged runs left out and counted."""
    from scipy import stats as sps

    root = fake_sweep(tmp_path / "s", norms=("bn",), lrs=(0.1, 0.5), seeds=range(5))
    # the last configuration: 3 seeds, plus one diverged
    for j in (8, 9):
        (tmp_path / "s" / str(j)).rename(tmp_path / f"gone{j}")
    fake_run(
        root / "10", norm="bn", lr=0.5, seed=6, status="diverged", diverged_at=150,
        overrides=["norm=bn", "optimizer.lr=0.5", "seed=6"],
    )  # fmt: skip
    sweep = load_sweep(root)
    agg = sweep.aggregate().set_index("optimizer.lr")
    assert list(agg.columns) == [
        "label", "mean", "lo", "hi", "n", "method", "level", "diverged", "text",
    ]  # fmt: skip
    assert list(agg["label"]) == ["optimizer.lr=0.1", "optimizer.lr=0.5"]
    five = sweep.runs.loc[sweep.runs["optimizer.lr"] == 0.1, "final_test_accuracy"]
    assert len(five) == 5 and five.std() > 0
    lo, hi = sps.t.interval(0.95, df=4, loc=five.mean(), scale=sps.sem(five))
    row = agg.loc[0.1]
    assert (row["n"], row["method"], row["level"], row["diverged"]) == (5, "t", 95.0, 0)
    assert row["mean"] == pytest.approx(five.mean()) and row["lo"] == pytest.approx(lo)
    assert row["hi"] == pytest.approx(hi)
    assert row["text"].endswith("(n=5, 95% t)") and " ± " in row["text"]
    ok = sweep.runs[(sweep.runs["optimizer.lr"] == 0.5) & (sweep.runs["status"] == "finished")]
    three = ok["final_test_accuracy"]
    row = agg.loc[0.5]
    assert (row["n"], row["method"], row["diverged"]) == (3, "min-max", 1)
    assert (row["lo"], row["hi"]) == (three.min(), three.max())
    assert row["text"].endswith("(n=3, min-max)")
    assert sweep.aggregate(diverged=True).set_index("optimizer.lr").loc[0.5, "n"] == 4


def test_identical_runs_get_distinct_labels(tmp_path):
    fake_run(tmp_path / "x" / "a")
    fake_run(tmp_path / "y" / "a")
    sweep = load_sweep(str(tmp_path / "*" / "a"))
    assert sweep.runs["label"].nunique() == 2
    assert sweep.runs["run"].nunique() == 2


def test_sweep_reports_half_written_runs(tmp_path):
    root = fake_sweep(tmp_path / "s", norms=("bn",), lrs=(0.1, 0.5))
    fake_run(root / "2", norm="bn", lr=1.0, status="running")  # killed
    (root / "3" / ".hydra").mkdir(parents=True)  # crashed before any record
    (root / "3" / ".hydra" / "overrides.yaml").write_text("- norm=bn\n- optimizer.lr=5.0\n")
    fake_run(root / "4", norm="bn", lr=2.0)
    (root / "4" / SCALARS).unlink()
    with pytest.warns(RunProblemWarning, match="3 of 5 runs"):
        sweep = load_sweep(root)
    assert list(sweep.runs["run"]) == ["0", "1", "2", "3", "4"]  # kept, not dropped
    assert list(sweep.runs["status"]) == ["finished", "finished", "running", "missing", "finished"]
    text = "\n".join(sweep.problems)
    assert "2: status 'running'" in text and "3: no summary.json" in text
    assert f"4: no {SCALARS}" in text
    assert set(sweep.activations["run"]) == {"0", "1", "2", "4"}
    assert sweep.runs.loc[sweep.runs["run"] == "3", "problems"].item()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sweep(root, warn=False)


def test_diverged_run_is_a_result(tmp_path):
    fake_run(tmp_path / "d", lr=50.0, status="diverged", diverged_at=75)
    sweep = load_sweep(tmp_path / "d")
    r = sweep.runs.iloc[0]
    assert r["status"] == "diverged" and r["diverged_at"] == 75 and sweep.problems == []
    assert sweep.activations["step"].max() < 75


def test_find_runs_natural_order_and_errors(tmp_path):
    for i in (0, 1, 2, 10):
        fake_run(tmp_path / "m" / str(i), steps=50)
    assert [p.name for p in find_runs(tmp_path / "m")] == ["0", "1", "2", "10"]
    with pytest.raises(FileNotFoundError):
        find_runs(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        load_sweep(tmp_path / "m" / "0" / ".hydra")


def test_steps_to_target():
    sc = pd.DataFrame(
        {
            "run": ["a"] * 3 + ["b"] * 3,
            "step": [0, 100, 200] * 2,
            "name": ["test_accuracy"] * 6,
            "value": [0.1, 0.8, 0.9, 0.1, 0.3, 0.5],
        }
    )
    s = steps_to_target(sc, 0.8)
    assert s["a"] == 100 and np.isnan(s["b"])


# --------------------------------------------------------------------------- real runs


def _trainer_available() -> bool:
    return (ROOT / "bnlab" / "train.py").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _trainer_available(), reason="trainer (bnlab/train.py) not present")
def test_load_sweep_real_2x2_multirun(tmp_path):
    sweep_dir = tmp_path / "multirun"
    cmd = [
        sys.executable, "-m", "bnlab.train", "-m", "norm=none,bn", "optimizer.lr=0.1,0.5",
        "data=digits", "steps=100", "chunk_steps=100", "probe.every=50", "eval_every=100",
        "progress=false", "figure=false", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = load_sweep(sweep_dir)
    assert len(sweep) == 4 and sweep.problems == [], sweep.problems
    r = sweep.runs
    assert sorted(zip(r["norm"], r["optimizer.lr"], strict=True)) == [
        ("bn", 0.1), ("bn", 0.5), ("none", 0.1), ("none", 0.5),
    ]  # fmt: skip
    assert {"data", "steps"} <= set(sweep.keys)  # constant overrides are columns too
    assert sweep.varying == ["norm", "optimizer.lr"]
    assert set(r["status"]) <= {"finished", "diverged"}
    assert r["final_test_accuracy"].notna().all()
    for t in (sweep.scalars, sweep.activations, sweep.layers):
        assert {"run", "norm", "optimizer.lr", "label"} <= set(t.columns)
        assert t["run"].nunique() == 4
    acts = sweep.activations
    assert {"pre", "post"} <= set(acts["site"]) and (acts["unit"] == -1).any()
    assert set(acts.loc[acts["norm"] == "bn", "site"]) >= {"prenorm", "pre", "post"}
    summary = json.loads((sweep_dir / "0" / SUMMARY).read_text())
    assert summary["steps"] == 100
    # the end-of-sweep callback (configs/train.yaml: bnlab.analysis.report.SweepSummary) ran
    assert len(pd.read_csv(sweep_dir / "summary.csv")) == 4
    assert (sweep_dir / "figures" / "sweep_summary.png").exists()
    assert (r["seed"] == 0).all() and (sweep.scalars["seed"] == 0).all()
    assert (sweep_dir / "0" / ACTIVATIONS).exists()


def test_ics_table_is_optional(tmp_path):
    """ics.parquet (gradient-ICS probes) loads when there, and its absence is no problem."""
    from bnlab.record.tables import ICS

    fake_run(tmp_path / "a")
    fake_run(tmp_path / "b", norm="none")
    (tmp_path / "b" / ICS).unlink(missing_ok=True)
    sweep = load_sweep([tmp_path / "a", tmp_path / "b"])
    assert sweep.problems == []
    assert list(sweep.ics.columns[-4:]) == ["step", "layer", "stat", "value"]
    assert list(load_run(tmp_path / "b").ics.columns) == ["step", "layer", "stat", "value"]


def test_demo_sweep_reuses_a_finished_sweep_and_reports_failure(tmp_path, capsys):
    """demo_sweep: a sweep it made (same overrides, every run done) is reused without
    starting the trainer; a command the trainer refuses is a RuntimeError with its words."""
    from bnlab.analysis.runs import DEMO_MARK, demo_sweep

    root = fake_sweep(tmp_path / "s")
    (root / DEMO_MARK).write_text(json.dumps({"overrides": ["norm=none,bn", "steps=200"]}))
    assert demo_sweep(root, ["norm=none,bn", "steps=200"]) == root.resolve()
    assert "reusing the 4 finished runs" in capsys.readouterr().out
    # other overrides: the trainer runs (and here refuses an unknown key)
    with pytest.raises(RuntimeError, match="training failed") as err:
        demo_sweep(tmp_path / "bad", ["no_such_key=1", "data=digits", "steps=10"], timeout=300)
    assert "no_such_key" in str(err.value)
    assert not (tmp_path / "bad" / DEMO_MARK).exists()
