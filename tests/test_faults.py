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
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from trainer import QUICK, ROOT, as_if_killed, cli, tables, train

from bnlab.errors import UserError
from bnlab.record import tables as record
from bnlab.record.checkpoint import CHECKSUMS

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
        assert "Traceback" not in err, err[-3000:]
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


# --------------------------------------------------------------------------- integrity
# A small finished record, damaged in one way per case and resumed in this process:
# it must resume from what verifies, refuse what it cannot vouch for (one line, the fix
# named), and end with tables equal to the uninterrupted run's (rtol 0).

INTEGRITY = [*QUICK, "steps=300", "chunk_steps=50", "probe.every=25", "eval_every=100",
             "checkpoint_every=100", "model.features=[16,16]"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("integrity") / "run"
    train(INTEGRITY, run, INTEGRITY)  # checkpoints kept at 200 and 300
    return run


def _copy(finished: Path, tmp_path: Path, status: str = "running") -> Path:
    """The finished record as a kill would leave it: summary still ``running``."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    s = json.loads((run / record.SUMMARY).read_text())
    (run / record.SUMMARY).write_text(json.dumps({**s, "status": status}))
    return run


def _equal(run: Path, finished: Path) -> None:
    want = tables(finished)
    got = tables(run)
    assert got.keys() == want.keys()
    for name, df in want.items():
        pd.testing.assert_frame_equal(got[name], df, check_exact=True, obj=name)


def _resume(run: Path, capfd, *extra: str) -> tuple[dict, str]:
    capfd.readouterr()
    (s,) = train([*INTEGRITY, *extra], run)
    return s, capfd.readouterr().err


def _ckpt_files(run: Path, step: int) -> list[Path]:
    return sorted(p for p in (run / record.CHECKPOINTS / str(step)).rglob("*") if p.is_file())


@pytest.mark.xdist_group("integrity")
@pytest.mark.parametrize("damage", ["flipped", "empty", "no-checksum"])
def test_damaged_newest_checkpoint_falls_back_in_one_line(finished, tmp_path, capfd, damage):
    run = _copy(finished, tmp_path)
    if damage == "flipped":  # one byte of the largest array file
        f = max((p for p in _ckpt_files(run, 300) if "/d/" in p.as_posix()),
                key=lambda p: p.stat().st_size)  # fmt: skip
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "empty":
        shutil.rmtree(run / record.CHECKPOINTS / "300")
        (run / record.CHECKPOINTS / "300").mkdir()
    else:
        (run / record.CHECKPOINTS / "300" / CHECKSUMS).unlink()
    s, err = _resume(run, capfd)
    what = {"flipped": "fails its checksum", "empty": "is empty",
            "no-checksum": "has no checksum"}[damage]  # fmt: skip
    lines = [ln for ln in err.splitlines() if "the checkpoint at step 300" in ln]
    assert len(lines) == 1 and what in lines[0] and "the one at step 200" in lines[0], err
    assert "resumed from the checkpoint at step 200" in err
    assert s["status"] == "finished" and s["step"] == 300
    _equal(run, finished)
    assert (run / ".replaced" / "checkpoint-300").is_dir()  # set aside, not deleted


@pytest.mark.xdist_group("integrity")
@pytest.mark.parametrize("damage", ["hole", "duplicates", "value"])
def test_damaged_table_is_refused_then_rebuilt(finished, tmp_path, capfd, damage):
    run = _copy(finished, tmp_path)
    name = {"hole": record.ACTIVATIONS, "duplicates": record.SCALARS,
            "value": record.LAYERS}[damage]  # fmt: skip
    df = pd.read_parquet(run / name)
    if damage == "hole":  # steps 225-275 gone; the last step stays
        df = df[~df["step"].between(225, 275)]
    elif damage == "duplicates":
        df = pd.concat([df, df[df["step"] == 250]]).sort_values("step", kind="stable")
    else:  # same rows, one value changed
        df.loc[len(df) // 3, "value"] += 1.0
    df.to_parquet(run / name, index=False)
    with pytest.raises(UserError) as e:
        train(INTEGRITY, run)
    msg = str(e.value)
    assert "do not match its checkpoint at step 300" in msg and "resume.rebuild=true" in msg
    assert {"hole": "lacks steps 225-275", "duplicates": "repeats rows of steps 250",
            "value": "differs from the rows checksummed"}[damage] in msg  # fmt: skip
    s, err = _resume(run, capfd, "resume.rebuild=true")
    # the damage is after step 200 but for the changed value: rebuilt from 200, or 0
    at = 0 if damage == "value" and df.loc[len(df) // 3, "step"] <= 200 else 200
    assert (f"resumed from the checkpoint at step {at}" in err) == (at > 0), err
    assert s["status"] == "finished"
    _equal(run, finished)


@pytest.mark.xdist_group("integrity")
def test_record_without_its_config_is_refused_or_moved_aside(finished, tmp_path, capfd):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / ".hydra")
    with pytest.raises(UserError, match="holds a record without its config"):
        train([*INTEGRITY, "optimizer.lr=0.1"], run)
    s, err = _resume(run, capfd, "resume.enabled=false")  # the explicit start-over
    assert "was moved to" in err and s["status"] == "finished"
    old = run / ".replaced" / "record-1"
    assert (old / record.SCALARS).exists() and (old / record.CHECKPOINTS / "300").is_dir()
    _equal(run, finished)


@pytest.mark.xdist_group("integrity")
def test_resume_dir_continues_a_run_started_with_resume_disabled(finished, tmp_path, capfd):
    """``resume=DIR`` never replays a saved ``resume.enabled=false``: it continues."""
    from bnlab.record.resume import expand

    run = tmp_path / "run"
    over = [*INTEGRITY, "resume.enabled=false"]
    train(over, run, over)
    as_if_killed(run, drop_checkpoint=300)  # killed after its checkpoint at 200
    args = expand([f"resume={run}"])
    assert args[-1].startswith("hydra.run.dir=") and "resume.enabled=true" in args
    assert "resume.enabled=false" not in args  # the saved start-over is not replayed
    s, err = _resume(run, capfd, *args[:-1])
    assert "resumed from the checkpoint at step 200" in err and s["status"] == "finished"
    _equal(run, finished)


@pytest.mark.xdist_group("integrity")
def test_resume_to_fewer_steps_than_done_is_refused(finished, tmp_path):
    run = _copy(finished, tmp_path)
    with pytest.raises(UserError, match=r"checkpoint at step 300, beyond steps=200"):
        train([*INTEGRITY, "steps=200"], run)


@pytest.mark.xdist_group("integrity")
def test_a_signal_in_the_last_chunk_leaves_the_run_finished(tmp_path, monkeypatch):
    """SIGINT while the last chunk runs (sent by the process to itself), and a second one
    right after its commit: the run is complete, so it is ``finished``, not ``interrupted``."""
    from bnlab.run import driver

    divergence, commit = driver.Loop._divergence, driver.Loop._commit

    def in_last_chunk(self, losses, probe_steps, step):
        if int(probe_steps.max()) == self.cfg.steps:  # the last chunk's results
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs
        return divergence(self, losses, probe_steps, step)

    def after_last_commit(self, host, step):
        commit(self, host, step)
        if step == self.cfg.steps:  # the second signal: stop at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)

    monkeypatch.setattr(driver.Loop, "_divergence", in_last_chunk)
    monkeypatch.setattr(driver.Loop, "_commit", after_last_commit)
    (s,) = train([*INTEGRITY, "steps=100"], tmp_path)
    assert s["status"] == "finished" and s["step"] == 100
    assert json.loads((tmp_path / record.SUMMARY).read_text())["status"] == "finished"


def test_odd_paths_resume_and_a_signal_at_start_up_is_one_line(tmp_path):
    """A directory with Unicode, '=', ',', a quote and spaces: made, continued with
    ``resume=DIR`` and named in a printed command a shell splits back into it; SIGINT
    while the modules load: one line, exit 130."""
    from bnlab.record.guard import resume_command
    from bnlab.record.resume import hydra_quote

    run = tmp_path / "räum=1,b x'q"
    first = cli([*INTEGRITY, "steps=100", f"hydra.run.dir={hydra_quote(str(run))}"])
    assert first.returncode == 0 and (run / record.SUMMARY).exists(), first.stderr[-2000:]
    again = cli([f"resume={run}", "steps=200"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from the checkpoint at step 100" in again.stderr
    assert shlex.split(resume_command(run))[-1] == f"resume={run}"
    proc = subprocess.Popen([sys.executable, "-m", "bnlab.train", *INTEGRITY], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("bnlab: interrupted"), err


def test_a_full_disk_is_one_line_and_the_record_resumes(tmp_path):
    """A real ENOSPC (a 200 kB tmpfs, root only): one line, exit 2, no traceback (none
    either from Orbax's other writes of the failed save: bnlab.record.checkpoint
    lets them end first); with room again the run resumes to the uninterrupted run's
    tables."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:  # fmt: skip
        pytest.skip("needs root and mount to make a small file system")
    try:
        over = [*INTEGRITY, "steps=2000"]
        full = cli([*over, f"hydra.run.dir={mnt / 'run'}"])
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("bnlab: error: cannot write the run record") and "full" in last
        subprocess.run(["mount", "-o", "remount,size=4M", str(mnt)], check=True)
        again = cli([f"resume={mnt / 'run'}"])
        assert again.returncode == 0 and "resumed from the checkpoint" in again.stderr, again.stderr
        train(over, tmp_path / "ref")
        _equal(mnt / "run", tmp_path / "ref")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_signal_after_the_last_step_is_one_line_and_the_run_stays_finished(tmp_path):
    """SIGINT once the summary says ``finished`` (the figures being drawn, or the
    process ending): exit 0 or 130 with one line, no traceback, the record finished."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bnlab.train", *INTEGRITY, "steps=100",
                             "figure=true", f"hydra.run.dir={run}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((run / record.SUMMARY).read_text())["status"] == "finished":
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130) and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("bnlab: finished 100 steps" if proc.returncode == 0
                           else "bnlab: stopped after the run ended (finished"), last  # fmt: skip
    assert json.loads((run / record.SUMMARY).read_text())["status"] == "finished"
