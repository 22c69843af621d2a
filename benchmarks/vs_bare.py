"""bnlab's real command against a bare training loop that measures nothing.

    uv run python benchmarks/vs_bare.py [--steps 20000] [--rounds 3]

The workload of ``python -m bnlab.train`` (Fashion-MNIST, 784-100-100-100-10 sigmoid
MLP with BN, batch 60, SGD lr 0.5): in alternating rounds, median per way,

- ``bare``: the fastest plain loop we could write: the network in flax's ``Dense`` and
  ``BatchNorm``, its step in a ``lax.scan`` of 1,000 steps, batches by bnlab's rule
  (each epoch's permutation computed once; each chunk's indices handed to the scan),
  no probes, no records. Twice: without a bias before BN (the network of the plain
  Flax loop in the project's issue 24, which BN's mean subtraction makes the same
  function) and with it (bnlab's default ``model.use_bias=true``);
- ``chunk``: bnlab's compiled chunk alone (no probes), driven in a Python loop, on
  both networks;
- ``chunk+probes``: the same with the default probes (every 50 steps, on the probe
  device beside training);
- ``command``: ``python -m bnlab.train steps=N`` as a user types it, with probes,
  records, evaluation and checkpoints; its rate is ``summary.json``'s
  ``steps_per_sec`` (compilation left out).

The goals (issue 24): the bare loop at the rate of a plain Flax loop written the
obvious way; ``chunk`` >= 0.95x and ``command`` >= 0.9x the bare loop of the same
network. Prints a Markdown table.
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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_speed import bnlab_rate, compose  # noqa: E402

from bnlab.engine import devices  # noqa: E402
from bnlab.engine.batches import epoch_permutation  # noqa: E402
from bnlab.run.build import load_data  # noqa: E402

BATCH, LR = 60, 0.5


class BareMLP(nn.Module):
    """The Fig. 1 network written the plain way: ``Dense``, flax's ``BatchNorm``
    (momentum 0.99, epsilon 1e-5: bnlab's defaults) and a sigmoid per hidden layer.
    ``bias``: a bias in the hidden ``Dense`` layers (bnlab's ``model.use_bias``; BN's mean
    subtraction cancels it, so the plain way leaves it out)."""

    bias: bool

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape((x.shape[0], -1))
        for _ in range(3):
            x = nn.Dense(100, use_bias=self.bias)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5)(x)
            x = nn.sigmoid(x)
        return nn.Dense(10)(x)


def bare_rate(ds, steps: int, bias: bool = False, chunk: int = 1000) -> float:
    """Steady steps/s of the fastest plain loop we could write for the same work: the
    step in ``lax.scan``, ``chunk`` steps per call, batches drawn by bnlab's rule (each
    epoch's permutation computed once, by its own call, and each chunk's batch indices
    handed to the scan), the losses read back once per chunk; nothing measured."""
    model = BareMLP(bias)
    n = len(ds.train_y)
    spe = n // BATCH
    x_all, y_all = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    key = jax.random.PRNGKey(1)
    order = jax.jit(lambda e: epoch_permutation(key, e, n))
    v = model.init(jax.random.PRNGKey(0), x_all[:2], train=False)

    def step(carry, idx):
        params, stats = carry

        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x_all[idx],
                                      train=True, mutable=["batch_stats"])  # fmt: skip
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx])
            return ce.mean(), new["batch_stats"]

        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return (jax.tree.map(lambda p, d: p - LR * d, params, g), stats), loss

    @jax.jit
    def run(params, stats, idx):
        (params, stats), losses = jax.lax.scan(step, (params, stats), idx)
        return params, stats, losses

    orders: dict[int, jax.Array] = {}

    @jax.jit
    def take(both, e0, t0):  # the chunk's batch indices from two epochs' orders
        t = t0 + jnp.arange(chunk)
        at = lambda t: jax.lax.dynamic_slice(both[t // spe - e0], ((t % spe) * BATCH,), (BATCH,))  # noqa: E731
        return jax.vmap(at)(t)

    def indices(t0: int) -> jax.Array:
        e0 = t0 // spe
        for e in [e for e in orders if e < e0]:  # done with: let it go
            del orders[e]
        for e in (e0, e0 + 1):
            if e not in orders:
                orders[e] = order(e)
        return take(jnp.stack([orders[e0], orders[e0 + 1]]), e0, t0)

    params, stats, t = v["params"], v["batch_stats"], 0
    params, stats, losses = run(params, stats, indices(t))  # compile
    losses.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps // chunk):
        t += chunk
        params, stats, losses = run(params, stats, indices(t))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    devices.request_cpu_devices(2)
    ds = load_data(compose([]))
    nobias = ("model.use_bias=false",)
    ways = {  # name: (rate, the bare way it is compared with)
        "bare lax.scan, no bias before BN (the anchor's network)": (
            lambda: bare_rate(ds, args.steps), None),
        "bare lax.scan, bias before BN (bnlab's default network)": (
            lambda: bare_rate(ds, args.steps, bias=True), None),
        "bnlab chunk, no probes, model.use_bias=false": (
            lambda: bnlab_rate(ds, args.steps, False, overrides=nobias), 0),
        "bnlab chunk, no probes": (lambda: bnlab_rate(ds, args.steps, probes=False), 1),
        "bnlab chunk, probes every 50 (probe device)": (
            lambda: bnlab_rate(ds, args.steps, True), 1),
        "python -m bnlab.train (probes, records, eval, checkpoints)": (
            lambda: command_rate(args.steps), 1),
    }  # fmt: skip
    names = list(ways)
    got: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for name, (fn, _) in ways.items():
            got[name].append(fn())
            print(f"round {r + 1}: {name}: {got[name][-1]:.0f} steps/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in got.items()}
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, load average {load[0]:.2f} at the end; {args.steps} steps, "
          f"{args.rounds} alternating rounds, medians\n")  # fmt: skip
    print("| what | steps/s (median) | rounds | x its bare loop |\n|---|---|---|---|")
    for k, (_, base) in ways.items():
        ratio = "" if base is None else f"{med[k] / med[names[base]]:.2f}"
        print(f"| {k} | {med[k]:,.0f} | {', '.join(f'{x:.0f}' for x in got[k])} | {ratio} |")


if __name__ == "__main__":
    main()
