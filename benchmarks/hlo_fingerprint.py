"""Fingerprints of bnlab's compiled chunk: has a change altered the program XLA runs?

    uv run python benchmarks/hlo_fingerprint.py [--steps 100] [OVERRIDES...]

Builds the engine of ``python -m bnlab.train OVERRIDES`` (``data=digits`` unless
given), lowers its chunk with and without probes, and prints two hashes per program:
the lowered StableHLO, and the optimized HLO XLA compiled, with its debug tables
(source files, function names, line numbers) left out. Run it in two checkouts; equal
hashes mean the same program, so a refactor that only moves code cannot change speed
or numbers (issue 21 used it for the layout move).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import compose  # noqa: E402

from bnlab.run.build import build_engine, load_data  # noqa: E402

DEBUG_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def without_debug_info(hlo: str) -> str:
    """Optimized HLO text less its source-location tables and references into them."""
    out, skipping = [], False
    for line in hlo.split("\n"):
        if line in DEBUG_TABLES:
            skipping = True
            continue
        if skipping and not (line.startswith(("%", "ENTRY", "}"))):
            continue
        skipping = False
        out.append(re.sub(r", stack_frame_id=\d+|, metadata=\{[^}]*\}", "", line))
    return "\n".join(out)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="the chunk's length")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    overrides = args.overrides or ["data=digits"]
    cfg = compose([*overrides, f"chunk_steps={args.steps}", "probe.overlap=false"])
    ds = load_data(cfg)
    print("| chunk | lowered StableHLO | compiled HLO (no debug info) |\n|---|---|---|")
    for probes in (False, True):
        e = build_engine(cfg, ds, 1, 1, probes=probes)
        states = e.init([cfg.seed], [cfg.optimizer.lr], ds.train_x[:2])
        orders = e.orders.shapes(e._count(args.steps))
        low = e._chunk_jit.lower(states, jnp.zeros((), jnp.int32), e.data, orders,
                                 length=args.steps)  # fmt: skip
        compiled = without_debug_info(low.compile().as_text())
        name = "with probes" if probes else "no probes"
        print(f"| {name} | {digest(low.as_text())} | {digest(compiled)} |")


if __name__ == "__main__":
    main()
