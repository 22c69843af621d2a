"""Sweeps: vectorized members equal single runs; multirun launchers; the end-of-sweep summary."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from trainer import COMPILE_CACHE, CONFIGS, QUICK, as_if_killed, cli, tables, train

from bnlab.analysis import report
from bnlab.analysis.runs import load_sweep
from bnlab.errors import UserError
from bnlab.record import members
from bnlab.record import tables as record

BASE = [*QUICK, "steps=200", "chunk_steps=100", "eval_every=100"]
LRS = (0.05, 0.5, 1e6)  # 1e6 diverges within two steps
TOL = dict(rtol=1e-5, atol=1e-5)  # float32: batched matmuls add in another order


@pytest.fixture(scope="module", autouse=True)
def _compile_cache():
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(scope="session")  # session: not rebuilt when xdist interleaves modules
def single(tmp_path_factory):
    """``single(lr, seed)``: the run directory of that single run (trained once)."""
    root = tmp_path_factory.mktemp("single")
    done: dict[tuple[float, int], Path] = {}

    def get(lr: float, seed: int) -> Path:
        if (lr, seed) not in done:
            run = root / f"lr{lr:g}_seed{seed}"
            train([*BASE, f"optimizer.lr={lr}", f"seed={seed}"], run)
            done[(lr, seed)] = run
        return done[(lr, seed)]

    return get


def assert_same_run(member: Path, single_run: Path) -> None:
    a, b = tables(member), tables(single_run)
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], **TOL, obj=f"{member.name}/{name}")
    sa = json.loads((member / record.SUMMARY).read_text())
    sb = json.loads((single_run / record.SUMMARY).read_text())
    for key in ("status", "step", "steps", "diverged_at"):
        assert sa[key] == sb[key], key
    assert sa["final"].keys() == sb["final"].keys()


def test_grid_members_equal_single_runs(tmp_path, single):
    """3 lrs x 2 seeds in one program: every member's tables equal its single run's,
    the diverging lr is recorded per member without poisoning the others."""
    summaries = train([*BASE, "sweep.lr=[0.05,0.5,1e6]", "sweep.seeds=2"], tmp_path,
                      ["data=digits", "sweep.seeds=2"])  # fmt: skip
    grid = list(itertools.product(LRS, (0, 1)))
    assert [s["status"] for s in summaries] == ["finished"] * 4 + ["diverged"] * 2
    for i, (lr, seed) in enumerate(grid):
        assert_same_run(tmp_path / str(i), single(lr, seed))
        overrides = OmegaConf.load(tmp_path / str(i) / ".hydra" / "overrides.yaml")
        assert list(overrides) == ["data=digits", f"optimizer.lr={lr!r}", f"seed={seed}"]

    sw = load_sweep(tmp_path)  # read exactly like a multirun
    assert len(sw) == 6 and not sw.problems
    assert set(sw.varying) == {"optimizer.lr", "seed"}
    runs = sw.runs.set_index("run")
    assert list(runs["optimizer.lr"]) == [lr for lr, _ in grid]
    assert list(runs["seed"]) == [s for _, s in grid]
    assert (runs.loc[["4", "5"], "diverged_at"] == 2).all()


@pytest.mark.parametrize("axis", ["lr", "seeds"])
def test_one_axis_sweep_equals_single_runs_and_resumes(tmp_path, single, axis):
    """Only lrs (batch shared) or only seeds (batch per member): the members equal the
    single runs, also after a resume from the members' checkpoints."""
    over, grid = {
        "lr": ("sweep.lr=[0.05,0.5]", [(0.05, 0), (0.5, 0)]),
        "seeds": ("sweep.seeds=2", [(0.5, 0), (0.5, 1)]),
    }[axis]
    over = [*BASE, over, "checkpoint_every=100"]
    train(over, tmp_path)
    for i, (lr, seed) in enumerate(grid):
        assert_same_run(tmp_path / str(i), single(lr, seed))
    full = {i: tables(tmp_path / str(i)) for i in range(2)}

    # as if killed after the checkpoint at step 100: the last checkpoint is gone
    for i in range(2):
        as_if_killed(tmp_path / str(i), drop_checkpoint=200)
    train(over, tmp_path)
    for i in range(2):
        again = tables(tmp_path / str(i))
        for name in full[i]:
            pd.testing.assert_frame_equal(again[name], full[i][name])


def test_cli_vectorized_sweep(tmp_path, single):
    """`python -m bnlab.train sweep.lr=[...]`: exit 0 with a diverged member, member dirs
    that read as multirun jobs, the summary table and plot; a re-run finds it done. The
    command probes on a second device (``probe.overlap``); the members still equal the
    single runs (this process: probes inline)."""
    run = tmp_path / "run"
    args = [*BASE, "sweep.lr=[0.5,1e6]", f"hydra.run.dir={run}"]
    res = cli(args)
    assert res.returncode == 0, res.stderr
    assert "member 1 (lr 1e+06, seed 0) diverged at step 2" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (run / ".hydra").exists() and (run / members.HIDDEN_HYDRA / "config.yaml").exists()
    cfg = OmegaConf.load(run / "0" / ".hydra" / "config.yaml")
    assert cfg.optimizer.lr == 0.5 and list(cfg.sweep.lr) == [] and cfg.sweep.seeds == 0
    overrides = list(OmegaConf.load(run / "1" / ".hydra" / "overrides.yaml"))
    assert "optimizer.lr=1000000.0" in overrides and not any("sweep" in o for o in overrides)
    summary = pd.read_csv(run / report.SUMMARY_CSV)
    assert list(summary["status"]) == ["finished", "diverged"]
    assert list(summary["optimizer.lr"]) == [0.5, 1e6]
    assert (run / "figures" / report.SWEEP_PNG).stat().st_size > 0
    for i, lr in enumerate((0.5, 1e6)):
        assert json.loads((run / str(i) / record.SUMMARY).read_text())["probe_device"]
        assert_same_run(run / str(i), single(lr, 0))
    again = cli(args, timeout=120)
    assert again.returncode == 0 and "sweep already done" in again.stderr


def test_joblib_sweep_runs_two_jobs_in_parallel(tmp_path, single):
    """A 2-job multirun on the joblib launcher: both jobs recorded (one diverged, the
    sweep goes on), equal to the in-process runs; the summary lands in the sweep dir."""
    sweep_dir = tmp_path / "multirun"
    res = cli(
        [
            "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *BASE,
            "optimizer.lr=0.5,1e6", f"hydra.sweep.dir={sweep_dir}",
        ]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Joblib.Parallel(n_jobs=2" in res.stderr + res.stdout
    for job, lr in ((0, 0.5), (1, 1e6)):
        assert_same_run(sweep_dir / str(job), single(lr, 0))
        hydra_cfg = OmegaConf.load(sweep_dir / str(job) / ".hydra" / "hydra.yaml")
        assert "--xla_cpu_multi_thread_eigen=false" in hydra_cfg.hydra.job.env_set.XLA_FLAGS
    summary = pd.read_csv(sweep_dir / report.SUMMARY_CSV)
    assert list(summary["status"]) == ["finished", "diverged"]
    assert (sweep_dir / "figures" / report.SWEEP_PNG).exists()


def _hydra_compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bnlab import config

    config.register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("ray_cluster", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
    ],
)
def test_launcher_configs_compose(launcher, target):
    cfg = _hydra_compose([f"hydra/launcher={launcher}", "optimizer.lr=0.1"])
    assert cfg.hydra.launcher._target_ == target
    assert cfg.optimizer.lr == 0.1  # the job config is untouched
    env = cfg.hydra.job.env_set
    if launcher != "slurm":  # (slurm: in the job script, `setup`)
        assert env.XLA_PYTHON_CLIENT_PREALLOCATE == "false"
    if launcher == "parallel":
        assert cfg.hydra.launcher.n_jobs == -1
        assert env.XLA_FLAGS.strip().endswith("--xla_cpu_multi_thread_eigen=false")
    if launcher == "slurm":
        assert cfg.hydra.launcher.cpus_per_task >= 1
    if launcher == "ray_cluster":
        assert cfg.hydra.launcher.ray.remote.num_cpus == 1
    if launcher != "ray_cluster":  # the Ray plugin is the optional extra `ray`
        from hydra.utils import instantiate

        assert type(instantiate(cfg.hydra.launcher)).__name__ == target.rsplit(".", 1)[1]


def test_lr_sweep_preset_composes():
    cfg = _hydra_compose(["experiment=lr_sweep"])
    assert list(cfg.sweep.lr) == [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    assert cfg.hydra.sweeper.params.norm == "none,bn,bn_noaffine"
    assert cfg.model.features == [100, 100, 100] and cfg.batch_size == 60
    assert cfg.chunk_steps == "auto" and cfg.steps % cfg.probe.every == 0


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("sweep.lr=[0.1,0.1]", "repeated"),
        ("sweep.lr=[0.1,-1]", "finite number > 0"),
        ("sweep.seeds=-1", ">= 0"),
        ("parallel.members=2", "parallel.members=2 asks for more devices"),
    ],
)
def test_bad_sweep_is_a_user_error(tmp_path, override, needle):
    with pytest.raises(UserError, match=needle):
        train([*BASE, "sweep.lr=[0.1,0.2]", override], tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_cli_bad_sweep_fails_in_one_line(tmp_path):
    """A mistake found inside bnlab.sweep is the entry point's UserError: one line, exit 2
    (run as `python -m bnlab.train`, the entry module is __main__, not bnlab.train)."""
    res = cli([*BASE, "sweep.lr=[0.1,0.1]", f"hydra.run.dir={tmp_path}"], timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert (
        res.stderr.strip().splitlines()[-1]
        == "bnlab: error: sweep.lr has repeated values: [0.1, 0.1]"
    )


@pytest.mark.slow
def test_optuna_lr_search(tmp_path):
    """`hparams_search=lr_optuna`: a real 3-trial Optuna (TPE) search of the lr on
    Fashion-MNIST; every trial is a run record, Optuna names the best lr by validation
    accuracy (never the test split's), and the sweep summary lands beside its results."""
    sweep_dir = tmp_path / "optuna"
    res = cli(
        [
            "hparams_search=lr_optuna", "norm=bn", "data=fashion_mnist", "progress=false",
            "figure=false", f"compile_cache={COMPILE_CACHE}",
            "steps=100", "chunk_steps=100", "probe.every=50", "eval_every=100",
            "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}",
        ]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    sw = load_sweep(sweep_dir)
    assert len(sw) == 3 and not sw.problems
    runs = sw.runs.set_index("run")
    assert list(runs.index) == ["0", "1", "2"] and (runs["status"] == "finished").all()
    assert (runs["norm"] == "bn").all()
    lrs = runs["optimizer.lr"]
    assert lrs.nunique() == 3 and lrs.between(1e-3, 30).all()
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = runs.loc[runs["final_val_accuracy"].idxmax()]
    assert results.best_params["optimizer.lr"] == best["optimizer.lr"]
    assert results.best_value == pytest.approx(best["final_val_accuracy"])
    assert 0.1 < results.best_value <= 1
    summary = pd.read_csv(sweep_dir / report.SUMMARY_CSV)
    assert sorted(summary["optimizer.lr"]) == sorted(lrs)
    assert (sweep_dir / "figures" / report.SWEEP_PNG).stat().st_size > 0


def test_optuna_ranks_a_diverged_run(tmp_path):
    """A diverged trial scores 0.0, a value Optuna can rank (None would fail the search)."""
    sweep_dir = tmp_path / "optuna"
    res = cli(
        [
            "hparams_search=lr_optuna", *BASE, "probe.every=50", "optimizer.lr=1e6",
            "data.validation=300",
            "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep_dir}",
        ]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads((sweep_dir / "0" / record.SUMMARY).read_text())["status"] == "diverged"
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").best_value == 0.0


def test_summary_callback_never_fails_the_sweep(tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}})
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="bnlab"):
        report.SweepSummary().on_multirun_end(config=config)
    assert "no sweep summary" in caplog.text


def test_the_objective_rule():
    """``objective=auto`` ranks the accuracy where the task has classes, else the loss,
    on the validation split where there is one; an unknown metric, a ``val_*`` without a
    validation split and an accuracy without classes are one line. ``session.report``
    returns the metric the summaries name, a loss negated (larger ranks higher)."""
    from bnlab.config.validate import objective
    from bnlab.run import session

    assert objective("auto", True, True) == "val_accuracy"
    assert objective("auto", True, False) == "test_accuracy"
    assert objective("auto", False, True) == "val_loss"
    assert objective("auto", False, False) == "test_loss"
    assert objective("train_loss", False, False) == "train_loss"
    for name, classes, val, needle in [
        ("val_acc", True, True, "objective=val_acc is not a metric: use auto or one of"),
        ("val_loss", True, False, "needs a validation split: set data.validation=N"),
        ("test_accuracy", False, True, "the task has no classes"),
    ]:
        with pytest.raises(UserError, match=needle):
            objective(name, classes, val)
    runs = [dict(status="finished", objective="val_loss", final={"val_loss": v})
            for v in (0.5, 0.2)] + [dict(status="diverged", objective="val_loss", final={})]  # fmt: skip
    assert session.report(runs, "w") == -0.2
    assert session.report([{**runs[2], "diverged_at": 3}], "w") == float("-inf")


def test_an_unknown_objective_is_one_line(tmp_path):
    res = cli([*BASE, "objective=val_acc", f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "bnlab: error: objective=val_acc is not a metric: use auto or one of val_accuracy"
        )
    )


def test_optuna_ranks_a_regression_by_validation_loss_with_optax_adamw(tmp_path):
    """``hparams_search=lr_optuna`` with ``optimizer._target_=optax.adamw`` on a task
    without classes (float targets, ``loss=mean_squared_error``): each trial trains adamw
    at the lr Optuna picked (its weight decay from ``optimizer.args``), and the best trial
    is the finished one with the lowest final validation loss (``best_value`` = minus
    that loss; a diverged trial scores -inf)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = x @ rng.normal(size=8).astype(np.float32)
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    sweep_dir = tmp_path / "optuna"
    quick = [o for o in QUICK if o != "data=digits"]
    res = cli(
        [
            "hparams_search=lr_optuna", *quick, "data=arrays", f"data.path={path}",
            "data.validation=100", "loss=mean_squared_error", "model.features=[16]",
            "optimizer=optax", "optimizer._target_=optax.adamw",
            "+optimizer.args.weight_decay=1e-3", "steps=50", "chunk_steps=50", "eval_every=50",
            "batch_size=50", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir}",
        ]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    runs = load_sweep(sweep_dir).runs.set_index("run")
    assert len(runs) == 2 and (runs["optimizer._target_"] == "optax.adamw").all()
    # the seeded sampler's second lr (1.6) diverges: it scores -inf and ranks last
    assert list(runs["status"]) == ["finished", "diverged"]
    done = runs[runs["status"] == "finished"]
    np.testing.assert_allclose(done["final_lr"], done["optimizer.lr"], rtol=1e-6)  # injected
    assert "final_val_accuracy" not in runs
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = done.loc[done["final_val_loss"].idxmin()]
    assert results.best_params["optimizer.lr"] == best["optimizer.lr"]
    assert results.best_value == pytest.approx(-best["final_val_loss"])
    summary = json.loads((sweep_dir / "0" / record.SUMMARY).read_text())
    assert summary["objective"] == "val_loss"
