"""bnlab's real command against a bare training loop that measures nothing.

    uv run python benchmarks/vs_bare.py [--steps 20000] [--rounds 3]

The workload of ``python -m bnlab.train`` (Fashion-MNIST, 784-100-100-100-10 sigmoid
MLP with BN, batch 60, SGD lr 0.5): in alternating rounds, median per way,

- ``bare``: a hand-written ``lax.scan`` of the same network's step in plain
  ``jax.numpy`` (no flax, no probes, no records), batches gathered on device from a
  per-epoch permutation exactly as bnlab draws them, 1,000 steps per scan;
- ``bare, one core``: the same, in a process pinned to one core (``taskset -c 0``):
  what the bare loop gets from the second core, which bnlab spends on measuring;
- ``chunk``: bnlab's compiled chunk alone (no probes), driven in a Python loop;
- ``chunk+probes``: the same with the default probes (every 50 steps, on the probe
  device beside training);
- ``command``: ``python -m bnlab.train steps=N`` as a user types it, with probes,
  records, evaluation and checkpoints; its rate is ``summary.json``'s
  ``steps_per_sec`` (compilation left out).

The goal (issue 17): ``command`` >= 0.95x ``bare``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_speed import bnlab_rate, compose  # noqa: E402

from bnlab.engine import devices  # noqa: E402
from bnlab.engine.batches import epoch_permutation  # noqa: E402
from bnlab.run.build import load_data  # noqa: E402

WIDTHS, BATCH, LR, EPS, MOM = (784, 100, 100, 100, 10), 60, 0.5, 1e-5, 0.99


def bare_params(key):
    params, stats = [], []
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        k = jax.random.fold_in(key, i)
        layer = {"w": 0.1 * jax.random.normal(k, (a, b)), "b": jnp.zeros(b)}
        if i < len(WIDTHS) - 2:
            layer |= {"g": jnp.ones(b), "beta": jnp.zeros(b)}
            stats.append({"mean": jnp.zeros(b), "var": jnp.ones(b)})
        params.append(layer)
    return params, stats


def bare_loss(params, stats, x, y):
    h, new = x.reshape(x.shape[0], -1), []
    for layer, st in zip(params[:-1], stats, strict=True):
        h = h @ layer["w"] + layer["b"]
        mean = h.mean(0)
        var = jnp.mean(jnp.square(h - mean), 0)
        h = (h - mean) * jax.lax.rsqrt(var + EPS) * layer["g"] + layer["beta"]
        new.append({"mean": MOM * st["mean"] + (1 - MOM) * jax.lax.stop_gradient(mean),
                    "var": MOM * st["var"] + (1 - MOM) * jax.lax.stop_gradient(var)})  # fmt: skip
        h = jax.nn.sigmoid(h)
    logits = h @ params[-1]["w"] + params[-1]["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1)), new


def bare_rate(ds, steps: int, chunk: int = 1000) -> float:
    """Steady steps/s of the bare scan."""
    n = len(ds.train_y)
    spe = n // BATCH
    x_all, y_all = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    key = jax.random.PRNGKey(1)

    @jax.jit
    def run(params, stats, t0):
        e0 = t0 // spe
        perms = jax.vmap(lambda e: epoch_permutation(key, e, n))(e0 + jnp.arange(chunk // spe + 2))

        def step(carry, _):
            params, stats, t = carry
            idx = jax.lax.dynamic_slice(perms[t // spe - e0], ((t % spe) * BATCH,), (BATCH,))
            (loss, new), g = jax.value_and_grad(bare_loss, has_aux=True)(
                params, stats, x_all[idx], y_all[idx]
            )
            params = jax.tree.map(lambda p, d: p - LR * d, params, g)
            return (params, new, t + 1), loss

        (params, stats, t), losses = jax.lax.scan(step, (params, stats, t0), None, length=chunk)
        return params, stats, t, losses

    params, stats = bare_params(jax.random.PRNGKey(0))
    t = jnp.int32(0)
    params, stats, t, losses = run(params, stats, t)  # compile
    losses.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps // chunk):
        params, stats, t, losses = run(params, stats, t)
        np.asarray(losses)  # the host reads each chunk's losses, as any loop must
    return (steps // chunk) * chunk / (time.perf_counter() - start)


def command_rate(steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "bnlab.train", f"steps={steps}", "progress=false",
             "figure=false", f"hydra.run.dir={tmp}/run"],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        return json.loads((Path(tmp) / "run" / "summary.json").read_text())["steps_per_sec"]


def pinned_bare_rate(steps: int) -> float:
    """The bare rate in a fresh process pinned to core 0 (``os.sched_setaffinity``
    before JAX starts its threads)."""
    out = subprocess.run(
        [sys.executable, __file__, "--steps", str(steps), "--bare-on-core", "0"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bare-on-core", type=int, help=argparse.SUPPRESS)  # pinned_bare_rate
    args = ap.parse_args()
    if args.bare_on_core is not None:
        os.sched_setaffinity(0, {args.bare_on_core})
        print(bare_rate(load_data(compose([])), args.steps))
        return
    devices.request_cpu_devices(2)
    ds = load_data(compose([]))
    ways = {
        "bare lax.scan, no probes, no records": lambda: bare_rate(ds, args.steps),
        "bare lax.scan, pinned to one core": lambda: pinned_bare_rate(args.steps),
        "bnlab chunk, no probes": lambda: bnlab_rate(ds, args.steps, probes=False),
        "bnlab chunk, probes every 50 (probe device)": lambda: bnlab_rate(ds, args.steps, True),
        "python -m bnlab.train (probes, records, eval, checkpoints)": lambda: command_rate(
            args.steps
        ),
    }
    got: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for name, fn in ways.items():
            got[name].append(fn())
            print(f"round {r + 1}: {name}: {got[name][-1]:.0f} steps/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in got.items()}
    bare = med["bare lax.scan, no probes, no records"]
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, load average {load[0]:.2f} at the end; {args.steps} steps, "
          f"{args.rounds} alternating rounds, medians\n")  # fmt: skip
    print("| what | steps/s (median) | rounds | x bare |\n|---|---|---|---|")
    for k, v in got.items():
        print(f"| {k} | {med[k]:,.0f} | {', '.join(f'{x:.0f}' for x in v)} | {med[k] / bare:.2f} |")


if __name__ == "__main__":
    main()
