"""Where the command's time goes between chunks: a timeline of one real run.

    uv run python benchmarks/timeline.py [--steps 50000] [OVERRIDE ...]

Runs ``python -m bnlab.train`` in this process (``progress=false figure=false`` and the
overrides), recording when each chunk is launched and when the device finishes it (a
waiting thread per chunk, which holds no core), and how long the host spends in each
of the driver's calls. Prints a Markdown table:

- ``device busy``: a chunk's time on the device, from when it could start (its launch,
  or the previous chunk's end) to its end;
- ``idle before``: the device's wait between a chunk's end and the next one's launch
  (0 where the next chunk was already queued);
- ``probes after``: how long after its chunk's end the probe device finishes the
  chunk's activation statistics;
- the host's calls (evaluation, the probes' rows, checkpoints, the tables), each
  with its count, median and total.

The first two chunks (compilation, calibration) are left out of the device figures.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import compose  # noqa: E402

from bnlab.engine import devices  # noqa: E402
from bnlab.engine.chunk import Engine  # noqa: E402
from bnlab.record import checkpoint, tables  # noqa: E402
from bnlab.run import driver  # noqa: E402

HOST_CALLS = {  # label: (owner, attribute)
    "evaluation asked for": (Engine, "evaluate"),
    "state copy asked for": (Engine, "keep"),
    "chunk launched": (Engine, "chunk"),
    "probes' and evaluation's rows (waits for the probe device)": (driver.Loop, "_flush"),
    "checkpoint commit (all of it)": (driver.Loop, "_commit"),
    "  tables written": (tables.RunRecord, "write_tables"),
    "  checkpoint saved": (checkpoint.Checkpoints, "save"),
    "  checksums": (driver, "digests"),
}


def instrument() -> tuple[list[dict], dict[str, list[float]]]:
    """Wrap the engine's and driver's calls; returns the chunk events and host times."""
    chunks: list[dict] = []
    host: dict[str, list[float]] = collections.defaultdict(list)

    def timed(label: str, fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                host[label].append(time.perf_counter() - t)

        return call

    for label, (owner, name) in HOST_CALLS.items():
        setattr(owner, name, timed(label, getattr(owner, name)))
    launch = Engine.chunk

    def chunk(self, states, t0, length):
        ev = {"t0": t0, "launch": time.perf_counter()}
        out = launch(self, states, t0, length)
        chunks.append(ev)

        def wait(metrics=out[1]):
            jax.block_until_ready(metrics.loss)
            ev["done"] = time.perf_counter()
            if metrics.acts is not None:
                jax.block_until_ready(metrics.acts)
                ev["probes"] = time.perf_counter()

        threading.Thread(target=wait, daemon=True).start()
        return out

    Engine.chunk = chunk
    return chunks, host


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    devices.request_cpu_devices(2)
    chunks, host = instrument()
    cfg = compose([f"steps={args.steps}", "progress=false", "figure=false", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        (summary, *_) = driver.train_and_evaluate(cfg, tmp)
    time.sleep(0.5)  # the last waiting threads
    ev = [c for c in chunks if "done" in c][2:]
    busy = [c["done"] - max(c["launch"], p["done"]) for p, c in zip(ev, ev[1:], strict=False)]
    idle = [max(0.0, c["launch"] - p["done"]) for p, c in zip(ev, ev[1:], strict=False)]
    probes = [c["probes"] - c["done"] for c in ev if "probes" in c]
    ms = lambda xs: f"{1e3 * statistics.median(xs):,.1f}" if xs else ""  # noqa: E731
    print(f"`python -m bnlab.train steps={args.steps} {' '.join(args.overrides)}`: "
          f"{summary['steps_per_sec']:,} steps/s, chunks of {summary['chunk_steps']} steps, "
          f"{len(ev)} chunks timed\n")  # fmt: skip
    print("| what | n | median ms | total s |\n|---|---|---|---|")
    print(f"| device busy per chunk | {len(busy)} | {ms(busy)} | {sum(busy):.2f} |")
    print(f"| device idle before the next chunk | {len(idle)} | {ms(idle)} | {sum(idle):.2f} |")
    print(f"| probes done after their chunk | {len(probes)} | {ms(probes)} | |")
    for label, xs in host.items():
        print(f"| host: {label} | {len(xs)} | {ms(xs)} | {sum(xs):.2f} |")


if __name__ == "__main__":
    main()
