"""Helpers for tests that run the real trainer (in-process or as a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# one JAX compilation cache for the whole test session: runs of the same config
# (in-process or in subprocesses) compile once
COMPILE_CACHE = Path(os.environ.get("BNLAB_TEST_COMPILE_CACHE", "/tmp/bnlab-test-compile-cache"))
QUICK = [
    "data=digits",
    "progress=false",
    "figure=false",
    f"compile_cache={COMPILE_CACHE}",
    "chunk_steps=100",  # fixed: auto chunks compile one more program (tested on its own)
    "probe.every=50",  # fixed intervals (the auto ones scale with steps: test_scale.py)
    "eval_every=1000",
]


def compose(overrides: list[str]):
    """The config ``python -m bnlab.train OVERRIDES`` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bnlab import config

    config.register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def cli(args: list[str], *, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m bnlab.train ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "bnlab.train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw,
    )  # fmt: skip


def tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every record table the run wrote (optional ones only where present)."""
    from bnlab.record import tables as record

    return {
        name: pd.read_parquet(run_dir / name)
        for name in record.COLUMNS
        if (run_dir / name).exists()
    }


def as_if_killed(run_dir: Path, drop_checkpoint: int | None = None) -> None:
    """Make a finished record look interrupted: its summary says ``running``, and
    ``drop_checkpoint`` (a step), if given, is gone, as if killed before writing it."""
    import json
    import shutil

    from bnlab.record import tables as record

    if drop_checkpoint is not None:
        shutil.rmtree(run_dir / record.CHECKPOINTS / str(drop_checkpoint))
    s = json.loads((run_dir / record.SUMMARY).read_text())
    (run_dir / record.SUMMARY).write_text(json.dumps({**s, "status": "running"}))


def train(overrides: list[str], run_dir: Path, cli_overrides: list[str] | None = None) -> list:
    """Train in this process (``bnlab.run.driver.train_and_evaluate``); one summary per member."""
    from bnlab.run.driver import train_and_evaluate

    return train_and_evaluate(compose(overrides), run_dir, cli_overrides)


def engine_for(overrides: list[str], *, probes: bool = True, devices: tuple[int, int] = (1, 1)):
    """``(engine, member states, typed config)`` of a composed config, built as a run is."""
    from bnlab import config
    from bnlab.run.driver import build_engine, load_data

    cfg = config.typed(compose(overrides))
    ds = load_data(cfg)
    e = build_engine(cfg, ds, *devices, probes=probes)
    members = [(lr, s) for lr in cfg.lrs for s in cfg.seeds]
    states = e.init([s for _, s in members], [lr for lr, _ in members], ds.train_x[:2])
    return e, states, cfg
