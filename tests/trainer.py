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
QUICK = ["data=digits", "progress=false", "figure=false", f"compile_cache={COMPILE_CACHE}"]


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
    from bnlab import record

    return {
        name: pd.read_parquet(run_dir / name)
        for name in record.COLUMNS
        if (run_dir / name).exists()
    }
