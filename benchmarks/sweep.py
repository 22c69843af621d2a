"""An 8-learning-rate sweep of the Ioffe & Szegedy Fig. 1 setup, done four ways.

    uv run python benchmarks/sweep.py [--steps 50000] [--workers 2] [--ways one,sequential,...]

The Fig. 1 setup (Fashion-MNIST, 784-100-100-100-10 sigmoid MLP with BN, batch 60,
SGD, probes every 50 steps) at the ``experiment=lr_sweep`` grid of 8 learning rates.
Each way is the command a user types, run as a subprocess into a fresh directory,
with JAX's persistent compilation cache off (every way compiles what it needs) and
per-run figures off:

- ``one``: a single run at lr 0.5 (the unit of the goal: the best way should finish
  the 8-lr sweep in <= 4x its time);
- ``sequential``: ``-m optimizer.lr=...`` on Hydra's basic launcher: 8 runs, one
  after another, in one process;
- ``joblib``: the same on ``hydra/launcher=parallel`` with ``--workers`` processes;
- ``vectorized``: ``sweep.lr=[...]``: 8 members in one compiled program;
- ``members``: the same with ``parallel.members=--workers``: the members split over
  that many devices (on a CPU, cores), each training its share, one program;
- ``combined``: ``-m hydra/launcher=parallel sweep.lr=[4 lrs],[4 lrs]``: the workers
  each train a vectorized sweep of 8 / workers learning rates.

Per way: wall time (process start to exit: imports, data, compilation, training,
records, the sweep summary), that time over the single run's, model-steps/s (runs x
steps / wall), the runs' own steady rate (the records' ``steps_per_sec``, which
leaves out the first, compiling chunk; mean over runs), and the CPU time of the
process and its workers with model-steps per CPU second (the efficiency of each way,
less sensitive than wall time to other work on the machine). The load average is
read before and after each way: wall times mean little on a busy machine. Prints a
Markdown table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # configs/experiment/lr_sweep.yaml
WAYS = ("one", "sequential", "joblib", "vectorized", "members", "combined")


def _lr_list(lrs) -> str:
    return "[" + ",".join(f"{v:g}" for v in lrs) + "]"


def command(way: str, out: Path, steps: int, workers: int, lrs=LRS) -> list[str]:
    common = [
        "experiment=ioffe2015_fig1", f"steps={steps}", "progress=false", "figure=false",
        "compile_cache=null",
    ]  # fmt: skip
    run = [f"hydra.run.dir={out}"]
    multi = ["-m", f"hydra.sweep.dir={out}"]
    parallel = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={workers}"]
    if way == "one":
        return [*common, "optimizer.lr=0.5", *run]
    if way == "sequential":
        return [*multi, *common, "optimizer.lr=" + ",".join(f"{v:g}" for v in lrs)]
    if way == "joblib":
        return [*multi, *parallel, *common, "optimizer.lr=" + ",".join(f"{v:g}" for v in lrs)]
    if way == "vectorized":
        return [*common, f"sweep.lr={_lr_list(lrs)}", *run]
    if way == "members":  # the members split over `workers` devices (CPU: cores), one program
        return [*common, f"sweep.lr={_lr_list(lrs)}", f"parallel.members={workers}", *run]
    if way == "combined":
        k = -(-len(lrs) // workers)
        groups = [_lr_list(lrs[i : i + k]) for i in range(0, len(lrs), k)]
        return [*multi, *parallel, *common, "sweep.lr=" + ",".join(groups)]
    raise ValueError(way)


def summaries(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("summary.json"))]


def measure(way: str, out: Path, steps: int, workers: int) -> dict:
    cmd = [sys.executable, "-m", "bnlab.train", *command(way, out, steps, workers)]
    load0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and its workers, reaped
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    load1 = os.getloadavg()[0]
    if res.returncode != 0:
        raise RuntimeError(f"{way} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    runs = summaries(out)
    model_steps = sum(s["step"] for s in runs)
    rates = [s["steps_per_sec"] for s in runs if s.get("steps_per_sec")]
    return dict(
        way=way, runs=len(runs), diverged=sum(s["status"] == "diverged" for s in runs),
        wall_s=wall, cpu_s=cpu, model_steps=model_steps, model_steps_per_s=model_steps / wall,
        model_steps_per_cpu_s=model_steps / cpu if cpu else float("nan"),
        run_steps_per_s=sum(rates) / len(rates) if rates else float("nan"),
        load=(load0, load1), command=" ".join(cmd[3:]),
    )  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
        f"jax {jax.__version__} ({jax.default_backend()})"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50_000, help="steps per run (Fig. 1: 50,000)")
    ap.add_argument("--workers", type=int, default=2, help="joblib processes")
    ap.add_argument("--ways", default=",".join(WAYS), help=f"subset of {','.join(WAYS)}")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    ways = [w for w in args.ways.split(",") if w]
    bad = [w for w in ways if w not in WAYS]
    if bad:
        ap.error(f"unknown ways {bad}; choose from {WAYS}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bnlab-sweep-bench-") as tmp:
        for way in ways:
            r = measure(way, Path(tmp) / way, args.steps, args.workers)
            results.append(r)
            print(
                f"{way}: {r['wall_s']:.1f} s, {r['model_steps_per_s']:.0f} model-steps/s "
                f"(load {r['load'][0]:.1f} -> {r['load'][1]:.1f})",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    one = next((r["wall_s"] for r in results if r["way"] == "one"), None)
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine()}; {args.steps} steps per run, ", end="")
    print(f"{len(LRS)} learning rates {_lr_list(LRS)}, {args.workers} workers\n")
    print(
        "| way | runs (diverged) | wall time | x one run | model-steps/s | run steps/s "
        "| CPU time | model-steps per CPU s | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['wall_s'] / one:.2f}" if one else "-"
        print(
            f"| {r['way']} | {r['runs']} ({r['diverged']}) | {r['wall_s']:.1f} s | {ratio} | "
            f"{r['model_steps_per_s']:.0f} | {r['run_steps_per_s']:.0f} | {r['cpu_s']:.0f} s | "
            f"{r['model_steps_per_cpu_s']:.0f} | {r['load'][0]:.1f} -> {r['load'][1]:.1f} |"
        )
    print()
    for r in results:
        print(f"- {r['way']}: `python -m bnlab.train {r['command']}`")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
