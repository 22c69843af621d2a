"""Fault injection: real runs killed at random moments and inside each kind of file
write, with SIGKILL, SIGTERM and SIGINT (and a second signal during the save), then
resumed; every table must equal the uninterrupted run's, and nothing may be lost.

``BNLAB_FAULT_CASES=N`` runs N cases (default 20, the CI set: every signal with every trigger); the cases are seeded,
so a failure names the case that reproduces it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from trainer import QUICK, ROOT, tables

from bnlab.record import tables as record

pytestmark = pytest.mark.faults
STEPS = 400
RUN = [*QUICK, f"steps={STEPS}", "chunk_steps=50", "probe.every=25", "eval_every=50",
       "checkpoint_every=100", "model.features=[16,16]", "norm=bn_noisy"]  # fmt: skip
N = int(os.environ.get("BNLAB_FAULT_CASES", "20"))
SIGNALS = ["SIGKILL", "SIGTERM", "SIGINT", "SIGTERM+SIGINT"]
# what the killer waits for: a moment after start, or a file being written
TRIGGERS = ["time", "table.tmp", "summary.tmp", "orbax-tmp"]


def cases(n: int) -> list[tuple[int, str, str, float]]:
    """(case, signal(s), trigger, when as a fraction of an uninterrupted run's time)."""
    rng = random.Random(
        13
    )  # any 4 consecutive cases: every signal; 8: every trigger too; 16: all pairs
    return [
        (i, SIGNALS[i % 4], TRIGGERS[(i + i // 4) % 4], rng.uniform(0.2, 0.95)) for i in range(n)
    ]


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> tuple[dict[str, pd.DataFrame], float]:
    """The uninterrupted run's tables and its wall time as a command."""
    run = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "bnlab.train", *RUN, f"hydra.run.dir={run}"],
                   cwd=ROOT, capture_output=True, timeout=600, check=True)  # fmt: skip
    return tables(run), time.monotonic() - t0


def _watch(run: Path, trigger: str, stop: threading.Event) -> None:
    """Return once the run starts writing what ``trigger`` names (or ``stop`` is set)."""
    pattern = {
        "table.tmp": lambda p: p.name.endswith(".parquet.tmp"),
        "summary.tmp": lambda p: p.name == "summary.json.tmp",
        "orbax-tmp": lambda p: "orbax-checkpoint-tmp" in p.name,
    }[trigger]
    while not stop.is_set():
        try:
            roots = [run, run / record.CHECKPOINTS]
            if any(pattern(p) for r in roots if r.is_dir() for p in r.iterdir()):
                return
        except OSError:
            pass
        time.sleep(0.0005)


@pytest.mark.parametrize("case", cases(N), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_kill_and_resume_loses_nothing(tmp_path, reference, case, record_property):
    i, sig, trigger, frac = case
    reference, wall = reference
    at = frac * wall
    run = tmp_path / "run"
    args = [*RUN, f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "bnlab.train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    t0 = time.monotonic()
    if trigger == "time":
        time.sleep(at)
    else:  # the first such write after the first few seconds
        time.sleep(at / 2)
        stop = threading.Event()
        timer = threading.Timer(60, stop.set)
        timer.start()
        _watch(run, trigger, stop)
        timer.cancel()
    alive = proc.poll() is None
    if alive:
        first, *second = sig.split("+")
        proc.send_signal(getattr(signal, first))
        if second:  # a second signal while it saves
            time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(getattr(signal, second[0]))
    _, err = proc.communicate(timeout=300)
    killed_at = time.monotonic() - t0
    if alive and sig != "SIGKILL":
        # stopped (130, or killed by the second signal), or the signal came once the
        # last step was done (while the last summary was written): finished as usual
        done = proc.returncode == 0 and f"finished {STEPS} steps" in err
        assert proc.returncode == 130 or proc.returncode < 0 or done, err[-3000:]
        assert "Traceback" not in err or "KeyboardInterrupt" in err, err[-3000:]
    res = subprocess.run([sys.executable, "-m", "bnlab.train", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / record.SUMMARY).read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS
    got = tables(run)
    assert got.keys() == reference.keys()
    for name, df in reference.items():
        pd.testing.assert_frame_equal(got[name], df, obj=f"case {i}: {name}")
    resumed = "resumed from the checkpoint at step" in res.stderr
    record_property("summary", f"case {i}: {sig} on {trigger} after {killed_at:.1f} s "
                    f"(alive: {alive}); resumed: {resumed}; tables equal")  # fmt: skip
