"""What the reproductions in ``experiments/`` share: running bnlab, reading runs back.

Each experiment's ``run.py`` trains with ``python -m bnlab.train -m ...`` (a Hydra
multirun: one process, jobs in order) into ``<out>/runs/<group>/<job>``, then reads
the runs back with :mod:`bnlab.runs`, draws figures with :mod:`bnlab.plot` into
``<out>/figures`` and writes ``<out>/summary.csv``. ``<out>`` is the experiment's own
folder unless ``--out`` says otherwise (the smoke tests write into a temp dir).
Runs resume: running the command again skips finished jobs and redraws.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bnlab import plot  # noqa: E402
from bnlab.runs import Sweep, load_sweep  # noqa: E402


def parse_args(name: str, doc: str | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"experiments/{name}/run.py", description=doc)
    ap.add_argument("--smoke", action="store_true", help="a few steps on data=digits (tests)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "experiments" / name,
        help="folder for runs/, figures/ and summary.csv (default: the experiment's folder)",
    )  # fmt: skip
    ap.add_argument(
        "--compile-cache", default=None,
        help="JAX compilation cache dir passed to bnlab (default: bnlab's own)",
    )  # fmt: skip
    ap.add_argument("--no-train", action="store_true", help="only redraw from existing runs")
    args = ap.parse_args()
    args.out = args.out.resolve()
    (args.out / "figures").mkdir(parents=True, exist_ok=True)
    return args


def train(args: argparse.Namespace, group: str, overrides: list[str]) -> Path:
    """``python -m bnlab.train -m OVERRIDES`` into ``<out>/runs/<group>``; returns that dir."""
    sweep_dir = args.out / "runs" / group
    if args.no_train:
        return sweep_dir
    cmd = [
        sys.executable, "-m", "bnlab.train", "-m", *overrides,
        f"hydra.sweep.dir={sweep_dir}", "progress=false", "figure=false",
    ]  # fmt: skip
    if args.compile_cache:
        cmd.append(f"compile_cache={args.compile_cache}")
    t0 = time.perf_counter()
    print(f"[{group}] python -m bnlab.train -m {' '.join(overrides)}", flush=True)
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("bnlab:")]
    print("\n".join(f"  {ln}" for ln in lines), flush=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"[{group}] bnlab.train failed (exit {res.returncode})")
    print(f"[{group}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return sweep_dir


def load(path: Path) -> Sweep:
    return load_sweep(path, warn=False)


def save(fig, args: argparse.Namespace, name: str) -> Path:
    path = args.out / "figures" / name
    fig.savefig(path, dpi=plot.DPI)
    print(f"figure: {path.relative_to(args.out)}")
    return path


def write_summary(df: pd.DataFrame, args: argparse.Namespace, name: str = "summary.csv") -> Path:
    path = args.out / name
    df.to_csv(path, index=False, float_format="%.6g")
    print(f"summary: {path.relative_to(args.out)}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.to_string(index=False))
    return path


def final(sweep: Sweep, label: str, name: str) -> float:
    """The last value of scalar ``name`` of the run ``label``."""
    sc = sweep.scalars
    rows = sc[(sc["label"] == label) & (sc["name"] == name)].sort_values("step")
    return float(rows["value"].iloc[-1]) if len(rows) else np.nan


def ics_summary(sweep: Sweep, *, tail: float = 0.5) -> pd.DataFrame:
    """Per run and layer: medians of the ICS / landscape statistics over the last
    ``tail`` fraction of the probes (the medians damp single-batch spikes)."""
    ics = sweep.ics
    if not len(ics):
        return pd.DataFrame()
    ics = ics[np.isfinite(ics["value"].astype(float))]
    cut = ics["step"].max() * (1 - tail)
    late = ics[ics["step"] >= cut]
    return late.groupby(["label", "layer", "stat"], sort=False)["value"].median().unstack("stat")
