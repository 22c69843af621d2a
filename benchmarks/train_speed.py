"""Training throughput of the Ioffe & Szegedy Fig. 1 setup, against a plain JAX loop.

    uv run python benchmarks/train_speed.py [--steps 50000]

Measures, in one process on the same data (Fashion-MNIST, batch 60, 784-100-100-100-10
sigmoid MLP with BN, SGD lr 0.5):

1. bnlab's compiled chunks with probes every 50 steps on the 1,000-example probe batch,
   the activation probes on a second CPU device alongside training (``probe.overlap``),
   and inline in the chunk (``probe.overlap=false``);
2. the same chunks without probes;
3. a plain ``jax.jit`` train step with ``flax.linen.BatchNorm`` called from a Python
   loop, batches indexed on the host (what a first script looks like);

then the time from typing ``python -m bnlab.train`` to the end of its first chunk,
with a cold and a warm JAX compilation cache (the data cache prepared). Steady-state
rates exclude compilation. Prints a Markdown table for ``benchmarks/RESULTS.md``.
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

from bnlab import config
from bnlab.config.scale import resolve
from bnlab.engine import devices
from bnlab.run.build import build_engine, load_data

ROOT = Path(__file__).resolve().parents[1]
FLOP_PER_STEP = 26.4e6  # forward + weight grads + input grads (not of the input layer)


def compose(overrides: list[str]) -> config.TrainConfig:
    """The typed config ``python -m bnlab.train OVERRIDES`` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config.register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = config.typed(hydra_compose("train", overrides=overrides))
    resolve(cfg)  # probe.every=auto, eval_every=auto: as the command resolves them
    return cfg


def bnlab_rate(ds, steps: int, probes: bool, overlap: bool = True, chunk: int = 1000,
               overrides: tuple[str, ...] = ()) -> float:  # fmt: skip
    """Steady steps/s of the engine's chunks (the default Fig. 1 config, or with
    ``overrides``), read back as the driver reads them: with ``overlap``, a chunk's
    activation probes (on the second device) are fetched only after the next chunk is
    dispatched."""
    cfg = compose([f"probe.overlap={str(overlap).lower()}", f"chunk_steps={chunk}", *overrides])
    e = build_engine(cfg, ds, 1, 1, probes=probes)
    states = e.init([cfg.seed], [cfg.optimizer.lr], ds.train_x[:2])
    e.compile(states, [chunk])
    states, out = e.chunk(states, 0, chunk)  # warm up
    jax.block_until_ready(out)
    pending, step = None, chunk
    t = time.perf_counter()
    for _ in range(steps // chunk):
        states, out = e.chunk(states, step, chunk)
        step += chunk
        jax.device_get(out.replace(acts=None))
        jax.device_get(pending)  # the previous chunk's probes, done alongside this chunk
        pending = out.acts
    jax.device_get(pending)
    return (steps // chunk) * chunk / (time.perf_counter() - t)


class PlainMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape((x.shape[0], -1))
        for _ in range(3):
            x = nn.Dense(100, kernel_init=nn.initializers.normal(0.1))(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.99)(x)
            x = nn.sigmoid(x)
        return nn.Dense(10)(x)


def plain_rate(ds, steps: int, model: nn.Module | None = None, tx=None, warmup: int = 100,
               batch: int = 60) -> float:  # fmt: skip
    """Steady steps/s of a jitted step of ``model`` (default: the Fig. 1 MLP with flax's
    BatchNorm; ``tx`` default SGD lr 0.5) called from a Python loop, batches indexed on
    the host."""
    model, tx = model or PlainMLP(), tx or optax.sgd(0.5)
    variables = model.init(jax.random.PRNGKey(0), ds.train_x[:2], train=False)
    params, bstats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, bstats, opt_state, x, y):
        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": bstats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), upd["batch_stats"], opt_state, loss

    rng = np.random.default_rng(0)
    n, bs = len(ds.train_y), batch
    perm = rng.permutation(n)

    def run(k):
        nonlocal params, bstats, opt_state, perm
        loss = None
        for i in range(k):
            pos = i % (n // bs)
            if pos == 0:
                perm = rng.permutation(n)
            idx = perm[pos * bs : (pos + 1) * bs]
            params, bstats, opt_state, loss = train_step(
                params, bstats, opt_state, ds.train_x[idx], ds.train_y[idx]
            )
        jax.block_until_ready(loss)

    run(warmup)  # compile and warm up
    t = time.perf_counter()
    run(steps)
    return steps / (time.perf_counter() - t)


def matmul_rate() -> float:
    """FLOP/s of a large float32 matmul: the arithmetic ceiling of this CPU."""
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    t = time.perf_counter()
    for _ in range(10):
        r = f(a)
    jax.block_until_ready(r)
    return 10 * 2 * 2048**3 / (time.perf_counter() - t)


def first_chunk(cache_dir: str, out_dir: str) -> tuple[float, float]:
    """(wall seconds of ``python -m bnlab.train`` for one chunk, its first_chunk_s)."""
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable, "-m", "bnlab.train", "steps=1000", "chunk_steps=1000", "progress=false",
            "figure=false", f"compile_cache={cache_dir}", f"hydra.run.dir={out_dir}",
        ],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - t
    return wall, json.loads((Path(out_dir) / "summary.json").read_text())["first_chunk_s"]


def startup(pairs: int) -> None:
    """Issue 24's goal 4: ``python -m bnlab.train`` (data prepared) to the end of its
    first chunk, with a cold and then a warm compile cache, ``pairs`` times in turns;
    ``summary.json``'s ``first_chunk_s`` (process start to the first chunk's end) and the
    command's wall time (with its exit: the final evaluation, tables, checkpoint)."""
    got: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for _ in range(pairs):
        with tempfile.TemporaryDirectory() as tmp:
            got["cold"].append(first_chunk(f"{tmp}/cache", f"{tmp}/a"))
            got["warm"].append(first_chunk(f"{tmp}/cache", f"{tmp}/b"))
    print("| compile cache | first_chunk_s (median) | runs | command wall s (median) |")
    print("|---|---|---|---|")
    for k, v in got.items():
        first = statistics.median(f for _, f in v)
        wall = statistics.median(w for w, _ in v)
        print(f"| {k} | {first:.1f} | {', '.join(f'{f:.1f}' for _, f in v)} | {wall:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--startup-only", type=int, nargs="?", const=3, metavar="N",
                    help="only the start-up: N cold/warm compile-cache pairs, in turns")  # fmt: skip
    args = ap.parse_args()
    if args.startup_only:
        startup(args.startup_only)
        return
    devices.request_cpu_devices(2)  # the probe device, as bnlab.train asks for it
    ds = load_data(compose([]))
    ceiling = matmul_rate()
    floor_rate = ceiling / FLOP_PER_STEP
    rates = {
        "bnlab, probes every 50": bnlab_rate(ds, args.steps, probes=True),
        "bnlab, probes every 50, inline (probe.overlap=false)": bnlab_rate(
            ds, args.steps, probes=True, overlap=False
        ),
        "bnlab, no probes": bnlab_rate(ds, args.steps, probes=False),
        "plain jit step + Python loop (flax BatchNorm)": plain_rate(ds, min(args.steps, 20_000)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cold = first_chunk(f"{tmp}/cache", f"{tmp}/a")
        warm = first_chunk(f"{tmp}/cache", f"{tmp}/b")
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, load average {load[0]:.2f} at the end; {args.steps} steps")  # fmt: skip
    print(f"large-matmul rate {ceiling / 1e9:.1f} GFLOP/s -> arithmetic floor "
          f"{floor_rate:.0f} steps/s at {FLOP_PER_STEP / 1e6:.1f} MFLOP/step\n")  # fmt: skip
    print("| loop | steps/s | of floor |\n|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {r:.0f} | {r / floor_rate:.0%} |")
    with_p, without = rates["bnlab, probes every 50"], rates["bnlab, no probes"]
    plain = rates["plain jit step + Python loop (flax BatchNorm)"]
    print(f"\nprobe overhead: {1 - with_p / without:.1%}; bnlab with probes / plain loop: "
          f"{with_p / plain:.2f}x")  # fmt: skip
    print(f"command to end of first chunk: cold compile cache {cold[0]:.1f} s "
          f"(first_chunk_s {cold[1]:.1f}), warm {warm[0]:.1f} s (first_chunk_s {warm[1]:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
