"""A small sweep for a notebook or a test: ``python -m bnlab.train -m ...`` in a child
process that ends with its caller, reused when it is already there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnlab.record.rundir import find_runs
from bnlab.record.tables import SUMMARY

DEMO_MARK = "demo_sweep.json"  # in the sweep dir: the overrides it was made with
DEMO_FIXED = ("progress=false", "figure=false")  # unless the overrides set these keys
_SAID = ("finished", "diverged", "interrupted", "error", "already")


def demo_sweep(
    out_dir: str | os.PathLike,
    overrides: Sequence[str],
    *,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> Path:
    """Train a small sweep for a notebook or a test; return its directory (``out_dir``).

    Runs ``python -m bnlab.train -m OVERRIDES progress=false figure=false
    hydra.sweep.dir=OUT_DIR`` in a subprocess of this interpreter (analysis code never
    imports the trainer) and prints the command and the trainer's one-line verdicts.
    ``out_dir`` already holding a finished sweep made with the same overrides (every
    run finished or diverged) is reused as it is, without starting the trainer. A
    failed command raises ``RuntimeError`` with the end of its stderr. The trainer
    ends with its caller (an interrupted or closed notebook stops it).
    """
    out_dir = Path(out_dir).resolve()
    overrides = [str(o) for o in overrides]
    mark = out_dir / DEMO_MARK
    if mark.exists() and json.loads(mark.read_text()).get("overrides") == overrides:
        paths = find_runs(out_dir)
        statuses = [_status(p) for p in paths]
        if paths and all(s in ("finished", "diverged") for s in statuses):
            print(f"reusing the {len(paths)} finished runs in {out_dir}")
            return out_dir
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    fixed = [o for o in DEMO_FIXED if o.split("=", 1)[0] not in given]
    cmd = [sys.executable, "-m", "bnlab.train", "-m", *overrides, *fixed]
    cmd.append(f"hydra.sweep.dir={out_dir}")
    print("python " + " ".join(cmd[1:]), flush=True)
    proc = _run_tied(cmd, cwd, timeout)
    said = [
        ln
        for ln in proc.stderr.splitlines()
        if ln.startswith("bnlab:") and any(w in ln for w in _SAID)
    ]
    if said:
        print("\n".join(said), flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    mark.write_text(json.dumps({"overrides": overrides, "command": cmd[1:]}, indent=2) + "\n")
    return out_dir


def _run_tied(cmd: list[str], cwd: Any, timeout: float | None) -> subprocess.CompletedProcess:
    """Run ``cmd`` as a child that ends with this process: stopped when the caller is
    interrupted (a notebook's interrupt, a timeout), and on Linux signalled when this
    process dies (a kernel shut down or killed)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_die_with_parent)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # interrupted: the training stops with its caller
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text()).get("status")
    except (OSError, ValueError):
        return None
