"""precision=fp32 against precision=bf16 (issue 22): `python -m bnlab.train` as typed,
its summary.json steps_per_sec (compilation left out), alternating rounds.

    uv run python benchmarks/precision.py [--models mlp cnn] [--steps 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mlp": [],  # the Fig. 1 MLP (784-100-100-100-10 on 8x8 digits: 64 inputs)
    "cnn": ["model=cnn", "data.flatten=false"],
}


def rate(model: str, precision: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        args = ["data=digits", f"steps={steps}", "progress=false", "figure=false",
                f"precision={precision}", f"hydra.run.dir={d}", *MODELS[model]]  # fmt: skip
        subprocess.run([sys.executable, "-m", "bnlab.train", *args], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        return json.loads((Path(d) / "summary.json").read_text())["steps_per_sec"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    print("| model | fp32 steps/s | bf16 steps/s | bf16 / fp32 |\n|---|---|---|---|")
    for m in a.models:
        got: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(a.rounds):
            for prec in got:
                got[prec].append(rate(m, prec, a.steps))
        f, b = (statistics.median(got[k]) for k in ("fp32", "bf16"))
        print(f"| {m} | {f:.1f} ({', '.join(f'{v:.1f}' for v in got['fp32'])}) | "
              f"{b:.1f} ({', '.join(f'{v:.1f}' for v in got['bf16'])}) | {b / f:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
