"""Conv nets through bnlab against a plain ``jax.jit`` loop of the same network (issue 14).

    uv run python benchmarks/conv_speed.py [--models cnn resnet vgg] [--rounds 3]

For each preset (``model=cnn``, ``model=resnet`` (ResNet-20), ``model=vgg``) on
Fashion-MNIST (28x28x1, batch 60, SGD with momentum), alternating rounds, median per way:

- ``plain``: the same Flax module with ``flax.linen.BatchNorm`` (momentum 0.99), a
  ``jax.jit`` train step called from a Python loop, batches indexed on the host; no
  probes, no records (what a first script looks like);
- ``engine``: bnlab's chunks with the default probes (every 50 steps on the 1,000
  probe images, conv sites sampled, on the probe device beside training), driven as the
  command drives them (the next chunk dispatched before the probes are read), without
  the test-set evaluation or records: the training throughput;
- ``command``: ``python -m bnlab.train model=NAME data.flatten=false`` as a user types
  it, with the default probes (every 50 steps on the 1,000-example probe batch, conv
  sites sampled), records, evaluation and checkpoints; its rate is ``summary.json``'s
  ``steps_per_sec`` (compilation left out; a short run's rate carries its final
  evaluation of the 10,000 test images, a ResNet-20's ~20 s on 2 CPU cores);
- ``command, no activation probes``: the same with ``probe.every`` = the run's length
  (one probe at step 0 and one at the end).

The goal (issue 14): ``command`` >= 0.9x ``plain``. Prints a Markdown table.

``--causes`` adds the two causes issue 14 named for conv nets being unusable through
bnlab on a CPU, each put back on its own: ``step_loop=scan`` (a chunk's steps in a
``lax.scan``, the way before) and ``probe.sample=null`` (percentiles over whole
activation maps, every position of the 1,000 probe images).
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
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_speed  # noqa: E402
from train_speed import compose  # noqa: E402

from bnlab.engine import devices  # noqa: E402
from bnlab.models import CNN, VGG, ResNet  # noqa: E402
from bnlab.run.build import load_data  # noqa: E402

# steps per timed run: each way runs for ~10-40 s on 2 CPU cores
STEPS = {"cnn": 1000, "resnet": 300, "vgg": 100}
CLASSES = {"cnn": CNN, "resnet": ResNet, "vgg": VGG}
LR, MOMENTUM = 0.05, 0.9


class FlaxBN(nn.BatchNorm):
    """``flax.linen.BatchNorm`` as the presets call their norm (``normalizes``: the MLP
    and CNN presets sow a ``prenorm`` site only in front of a norm that normalizes)."""

    normalizes = True


def preset_kwargs(name: str) -> dict:
    """The preset's constructor arguments, from its config (configs/model/NAME.yaml)."""
    cfg = compose([f"model={name}", "data.flatten=false"])
    return {k: v for k, v in cfg.model.items() if k != "_target_"}


def plain_rate(name: str, ds, steps: int) -> float:
    """Steady steps/s of a jitted step of the preset with flax's BatchNorm, host loop."""
    model = CLASSES[name](**preset_kwargs(name), norm=partial(FlaxBN, momentum=0.99))
    return train_speed.plain_rate(ds, steps, model, optax.sgd(LR, momentum=MOMENTUM), warmup=10)


def engine_rate(name: str, ds, steps: int, chunk: int = 50) -> float:
    """Steady steps/s of bnlab's chunks with the default probes (no evaluation, no
    records), read back as the driver reads them."""
    over = (f"model={name}", "optimizer=momentum", f"optimizer.lr={LR}")
    return train_speed.bnlab_rate(ds, steps, probes=True, chunk=chunk, overrides=over)


def command_rate(name: str, steps: int, probes: bool, extra: tuple[str, ...] = ()) -> float:
    """``summary.json``'s ``steps_per_sec`` of the real command (fresh directory)."""
    extra = [*extra] if probes else [f"probe.every={steps}", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "bnlab.train", f"model={name}", "data.flatten=false",
             "optimizer=momentum", f"optimizer.lr={LR}", f"steps={steps}",
             f"eval_every={steps}", f"checkpoint_every={steps}", "progress=false",
             "figure=false", f"hydra.run.dir={tmp}/run", *extra],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        return json.loads((Path(tmp) / "run" / "summary.json").read_text())["steps_per_sec"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet", "vgg"], choices=STEPS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps")
    ap.add_argument("--causes", action="store_true", help="add step_loop=scan, probe.sample=null")
    ap.add_argument(
        "--ways",
        type=int,
        nargs="+",
        help="only these ways: 0 plain, 1 bnlab chunks, 2 command, 3 command "
        "without probes, 4 step_loop=scan, 5 probe.sample=null (4, 5: --causes)",
    )
    ap.add_argument("--plain-only", nargs="*", default=[], help="models run only plain+chunks")
    args = ap.parse_args()
    devices.request_cpu_devices(2)  # the probe device, as bnlab.train asks for it
    ds = load_data(compose(["data.flatten=false"]))
    ways = {
        "plain jit step + Python loop (flax BatchNorm), no probes": lambda m, s: plain_rate(
            m, ds, s
        ),
        "bnlab chunks, default probes (no eval, no records)": lambda m, s: engine_rate(m, ds, s),
        "python -m bnlab.train (default probes, records, eval, checkpoints)": lambda m, s: (
            command_rate(m, s, probes=True)
        ),
        "python -m bnlab.train, no activation probes": lambda m, s: command_rate(m, s, False),
    }
    if args.causes:
        for extra in ("step_loop=scan", "probe.sample=null"):
            ways[f"python -m bnlab.train {extra}"] = lambda m, s, e=extra: command_rate(
                m, s, True, (e,)
            )
    if args.ways:
        ways = {w: fn for i, (w, fn) in enumerate(ways.items()) if i in args.ways}
    got = {(m, w): [] for m in args.models for w in ways}
    for r in range(args.rounds):
        for m in args.models:
            steps = max(50, int(STEPS[m] * args.scale) // 50 * 50)
            for i, (w, fn) in enumerate(ways.items()):
                if m in args.plain_only and i > 1:
                    continue
                got[m, w].append(fn(m, steps))
                print(f"round {r + 1}: {m}: {w}: {got[m, w][-1]:.2f} steps/s", file=sys.stderr)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, load average {load[0]:.2f} at the end; "
          f"{args.rounds} alternating rounds, medians\n")  # fmt: skip
    print("| model | way | steps/s (median) | rounds | x plain |\n|---|---|---|---|---|")
    for m in args.models:
        plain = statistics.median(got[m, next(iter(ways))])
        for w in ways:
            v = got[m, w]
            if not v:
                continue
            med = statistics.median(v)
            print(f"| {m} | {w} | {med:.2f} | {', '.join(f'{x:.2f}' for x in v)} | "
                  f"{med / plain:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
