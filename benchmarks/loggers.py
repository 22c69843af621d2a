"""What the loggers cost: the default run's steps/s with and without ``logger=tensorboard``.

    uv run python benchmarks/loggers.py [--steps 50000] [--repeat 2] [--chunk 1000]

Runs ``python -m bnlab.train`` (the default run: Fig. 1 on Fashion-MNIST, probes every
50 steps) side by side, alternating, without loggers and with ``logger=tensorboard
logger.histogram_every=500`` (histograms every 500 steps where ``chunk_steps`` allows:
they are taken between chunks, so with the default ``chunk_steps=1000`` every 1000;
``--chunk 500`` gives both runs chunks of 500 and histograms every 500). Reads each
run's own ``steps_per_sec`` (steady chunks, compile left out) from ``summary.json`` and
prints a Markdown table with the machine's load. Then times what the TensorBoard logger
adds to the host loop per chunk, on one chunk's rows of the last record as the host
loop adds them (CPU time of all threads, the writer's queue drained): the figure that
does not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "no loggers": [],
    "logger=tensorboard, histograms every 500": [
        "logger=tensorboard",
        "logger.histogram_every=500",
    ],  # fmt: skip
}


def one_run(args: list[str], out: Path) -> dict:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bnlab.train", *args, f"hydra.run.dir={out}",
                    "progress=false", "figure=false"],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    s["command_s"] = time.perf_counter() - t
    return s


def host_cost(run_dir: Path, chunk: int, repeat: int = 20) -> float:
    """CPU seconds the TensorBoard sink spends on one chunk's rows and histograms."""
    from types import SimpleNamespace as NS

    import numpy as np
    import pandas as pd

    from bnlab.loggers.tensorboard import TensorBoard
    from bnlab.record.tables import ACTIVATIONS, COLUMNS, RunRecord

    rec = RunRecord(Path(tempfile.mkdtemp()))
    for table in COLUMNS:
        df = pd.read_parquet(run_dir / table)
        df = df[(df["step"] > chunk) & (df["step"] <= 2 * chunk)]  # the second chunk
        labels = [c for c in COLUMNS[table] if c not in ("step", "value")]
        for key, g in df.groupby(labels) if len(df) else ():  # a block per label, as added
            key = key if isinstance(key, tuple) else (key,)
            rec.tables[table].add(step=g["step"].to_numpy(), value=g["value"].to_numpy(),
                                  **dict(zip(labels, key, strict=True)))  # fmt: skip
    sites = pd.read_parquet(run_dir / ACTIVATIONS)[["layer", "site"]].drop_duplicates()
    hist = {f"{la}/{si}": dict(min=-1.0, max=1.0, num=1e5, sum=0.0, sum_sq=1.0,
                               counts=np.ones(30)) for la, si in sites.itertuples(index=False)}  # fmt: skip
    logging.getLogger("tensorboardX").setLevel(logging.ERROR)
    tb = TensorBoard(NS(dir="tb"), dict(dir=tempfile.mkdtemp()), -1)
    t = time.process_time()
    for _ in range(repeat):
        for name, table in rec.tables.items():
            for block in table.blocks:
                tb.rows(name, block)
        tb.flush()
        tb.histograms(chunk, hist)
    tb.close({})
    return (time.process_time() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1000)
    args = ap.parse_args()
    base = [f"steps={args.steps}", f"chunk_steps={args.chunk}"]
    rates: dict[str, list[float]] = {k: [] for k in SETUPS}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for name, extra in SETUPS.items():
                out = Path(tmp) / f"{r}-{len(rates[name])}-{abs(hash(name))}"
                s = one_run([*base, *extra], out)
                rates[name].append(s["steps_per_sec"])
                loads.append(os.getloadavg()[0])
                print(f"{name}: {s['steps_per_sec']} steps/s ({s['command_s']:.1f} s command), "
                      f"load {loads[-1]:.2f}", file=sys.stderr, flush=True)  # fmt: skip
        cpu = host_cost(out, args.chunk)
    print(f"{os.cpu_count()} cores; load average during the runs {min(loads):.2f}-{max(loads):.2f}; "
          f"{args.steps} steps, chunk_steps={args.chunk}, {args.repeat} runs each, alternating\n")  # fmt: skip
    print("| setup | steps/s (median) | runs |\n|---|---|---|")
    for name, rs in rates.items():
        print(f"| {name} | {statistics.median(rs):.0f} | {', '.join(f'{x:.0f}' for x in rs)} |")
    a, b = (statistics.median(rs) for rs in rates.values())
    print(f"\nlogger=tensorboard: {b / a - 1:+.1%} steps/s")
    print(f"TensorBoard logger, host CPU per chunk of {args.chunk} steps (its rows and "
          f"histograms, writer thread included): {cpu * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
