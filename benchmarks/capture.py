"""Recording every module's output (issue 22, point 3): bnlab's interception against
Flax's own capture (linen ``capture_intermediates=True``, NNX ``nnx.capture(...,
method_outputs=nnx.Intermediate)``), on the same small CNN (conv-BN-relu x2, dense-BN-
relu, dense; a batch of 256 8x8 images), in both APIs.

bnlab's side is the probe's real path: the model built by ``build_networks`` with
``probe.sites=[*/out]`` (every module call's output), ``apply_state(capture=True)``.
Each side is one jitted training-mode forward pass returning every output; we time its
trace (``lower``), its compilation, and one call (median of ``--calls``), in
alternating rounds. The same forward passes recording nothing separate the cost of
recording from that of the forward pass itself (bnlab runs its own BN in place of
Flax's).

    uv run python benchmarks/capture.py [--rounds 3] [--calls 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
BATCH, CLASSES = 256, 10


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        for c in (16, 32):
            x = nn.Conv(c, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(64)(x)))
        return nn.Dense(CLASSES)(x)


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1, self.bn1 = nnx.Conv(1, 16, (3, 3), rngs=rngs), nnx.BatchNorm(16, rngs=rngs)
        self.conv2, self.bn2 = nnx.Conv(16, 32, (3, 3), rngs=rngs), nnx.BatchNorm(32, rngs=rngs)
        self.dense1, self.bn3 = nnx.Linear(8 * 8 * 32, 64, rngs=rngs), nnx.BatchNorm(64, rngs=rngs)
        self.dense2 = nnx.Linear(64, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        return self.dense2(nnx.relu(self.bn3(self.dense1(x))))


def bnlab_forward(target: str, x: jax.Array, capture: bool = True):
    """bnlab's probe path: ``(jitted fn, args, number of sites)`` (``capture=False``:
    the same forward pass recording nothing, its logits)."""
    from hydra import compose, initialize_config_dir

    from bnlab import config
    from bnlab.models.build import build_networks

    config.register()
    over = ["model=own", f"model._target_=capture.{target}", f"import_path=[{ROOT / 'benchmarks'}]",
            "probe.sites=[*/out]"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = config.typed(compose("train", overrides=over))
    net, _ = build_networks(cfg, CLASSES, jax.ShapeDtypeStruct(x.shape, x.dtype), 1, "data")
    params, bs, extra = net.init_state(jax.random.key(0), x)

    def f(params, bs, extra, x):
        out = net.apply_state(params, bs, x, train=True, capture=capture, extra=extra)
        return out[3] if capture else out[0]

    return jax.jit(f), (params, bs, extra, x), len(net.layout.selected) if capture else 0


def flax_forward(target: str, x: jax.Array, capture: bool = True):
    """Flax's own capture of every module's output: ``(jitted fn, args, number)``
    (``capture=False``: the plain forward pass, its logits)."""
    if target == "LinenCNN":
        m = LinenCNN()
        v = m.init(jax.random.key(0), x)

        def f(v, x):
            y, out = m.apply(v, x, capture_intermediates=capture,
                             mutable=["intermediates", "batch_stats"])  # fmt: skip
            return out["intermediates"] if capture else y

        args = (v, x)
    else:
        graphdef, state = nnx.split(NNXCNN(nnx.Rngs(0)))

        def f(state, x):
            model = nnx.merge(graphdef, state)
            if not capture:
                return model(x)
            return nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)[1]

        args = (state, x)
    n = len(jax.tree.leaves(jax.eval_shape(f, *args))) if capture else 0
    return jax.jit(f), args, n


def timed(make, target: str, x: jax.Array, calls: int) -> dict[str, float]:
    fn, args, n = make(target, x)
    t0 = time.perf_counter()
    low = fn.lower(*args)
    t1 = time.perf_counter()
    comp = low.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(comp(*args))
    runs = []
    for _ in range(calls):
        s = time.perf_counter()
        jax.block_until_ready(comp(*args))
        runs.append(time.perf_counter() - s)
    return dict(trace=t1 - t0, compile=t2 - t1, call=statistics.median(runs), sites=n)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=50)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, 1))
    ways = {"bnlab interception": bnlab_forward, "flax capture": flax_forward,
            "bnlab, nothing recorded": partial(bnlab_forward, capture=False),
            "flax, nothing recorded": partial(flax_forward, capture=False)}  # fmt: skip
    res: dict = {}
    for _ in range(a.rounds):
        for target in ("LinenCNN", "NNXCNN"):
            for way, make in ways.items():
                jax.clear_caches()
                res.setdefault((target, way), []).append(timed(make, target, x, a.calls))
    print(
        "| model | way | outputs | trace s | compile s | one call ms |\n|---|---|---|---|---|---|"
    )
    for (target, way), rs in res.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {target} | {way} | {med['sites']:.0f} | {med['trace']:.3f} | "
              f"{med['compile']:.3f} | {1e3 * med['call']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
