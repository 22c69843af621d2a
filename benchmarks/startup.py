"""Start-up time of the commands a user types, cold (no bytecode anywhere) and warm.

    uv run python benchmarks/startup.py [--repeat 5] [--cold 3]

Times, as whole commands from this checkout (``uv run`` included, its sync and any
bytecode compiling it does):

- ``uv run python -m bnlab.train --cfg job``: Hydra composes and prints the config
  (the light path: no JAX);
- ``uv run python -c "import bnlab.run.driver, bnlab.analysis.report"``: everything a run imports
  before it compiles (JAX, Flax, Orbax, TFDS, pandas, matplotlib);
- ``.venv/bin/bnlab-train --help`` and one tab completion (``bnlab-train -sc
  query=bash`` with ``COMP_LINE="bnlab-train optimizer.l"``, what bash runs at each
  key press once ``eval "$(bnlab-train -sc install=bash)"`` is done): the installed
  console script as a shell runs it, without ``uv run`` (``--only help,complete``).

Warm: the median of ``--repeat`` runs after one untimed run. Cold: every ``.pyc``
of the environment and the checkout removed before each of ``--cold`` runs (as after a
fresh ``uv sync`` without bytecode compiling), the median. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "train --cfg job": ["uv", "run", "python", "-m", "bnlab.train", "--cfg", "job"],
    "import driver+report": [
        "uv",
        "run",
        "python",
        "-c",
        "import bnlab.run.driver, bnlab.analysis.report",
    ],
    "help": [str(ROOT / ".venv" / "bin" / "bnlab-train"), "--help"],
    "complete": [str(ROOT / ".venv" / "bin" / "bnlab-train"), "-sc", "query=bash"],
}
ENV = {"complete": {"COMP_LINE": "bnlab-train optimizer.l", "COMP_POINT": "23"}}


def clear_bytecode() -> None:
    """Remove every compiled file of the environment and the checkout."""
    venv = ROOT / ".venv"
    for top in (venv, ROOT / "bnlab", ROOT / "tests", ROOT / "benchmarks"):
        for d in top.rglob("__pycache__"):
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(venv / ".pycache", ignore_errors=True)  # bnlab's sys.pycache_prefix


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(
        cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, **(env or {})}
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--only", help="comma-separated command names (default: all)")
    args = ap.parse_args()
    rows = []
    for name, cmd in COMMANDS.items():
        if args.only and name not in args.only.split(","):
            continue
        env = ENV.get(name)
        cold = []
        for _ in range(args.cold):
            clear_bytecode()
            cold.append(timed(cmd, env))
        timed(cmd, env)
        warm = [timed(cmd, env) for _ in range(args.repeat)]
        rows.append((name, statistics.median(cold) if cold else float("nan"),
                     statistics.median(warm), min(warm)))  # fmt: skip
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} at the end; "
          f"python {sys.version.split()[0]}; "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")  # fmt: skip
    print("| command | cold (median) | warm (median) | warm (best) |\n|---|---|---|---|")
    for name, c, w, b in rows:
        print(f"| `{name}` | {c:.2f} s | {w:.2f} s | {b:.2f} s |")


if __name__ == "__main__":
    main()
