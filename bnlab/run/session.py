"""Around a run: the process settings it needs, what completes it, and how it ends.

:func:`setup_process` runs before JAX starts; :func:`preload` imports in the
background what a run needs only after its first chunk; :func:`complete` draws the figures of
the members that ended and the sweep's summary (once: a rerun of a finished run draws
what is missing); :func:`report` says how the run ended in one line and exits 130 if
it was interrupted, with the one command that continues it.
"""

from __future__ import annotations

import atexit
import math
import sys
import threading
from pathlib import Path
from typing import Any

import jax

from bnlab.config import TrainConfig
from bnlab.errors import one_line, say  # noqa: F401  (one_line: re-exported)
from bnlab.record.guard import resume_command
from bnlab.record.tables import RunRecord

DONE = ("finished", "diverged")


def setup_process(cfg: Any) -> None:
    """Process-wide settings a run needs before JAX starts its backends."""
    import logging

    from bnlab.engine import devices

    logging.getLogger("jax").setLevel(logging.WARNING)  # backend-probing chatter
    if cfg.compile_cache:  # re-runs of a config skip most of XLA's compile time
        jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # a run has few
    # on a CPU, as many devices as the mesh needs, or two: a probe device beside training
    wanted = max(cfg.parallel.data, 1) * cfg.parallel.members
    devices.request_cpu_devices(max(wanted, 2 if cfg.probe.overlap and wanted == 1 else 1))


def preload() -> None:
    """Import, in a background thread, what the loop needs only after its first chunk
    (pandas and pyarrow for the tables, orbax for checkpoints) while this thread loads
    the data and XLA compiles: start-up (issue 17)."""

    def work() -> None:
        try:
            import pandas  # noqa: F401
            import pyarrow.parquet  # noqa: F401

            from bnlab.record.checkpoint import _ocp

            _ocp()
        except Exception:  # the loop imports them again, and says what is wrong
            pass

    thread = threading.Thread(target=work, name="bnlab-preload", daemon=True)
    thread.start()
    # a process that ends early (an error found after this point) waits for the imports:
    # killed mid-import, orbax's C++ threads abort the process at exit
    atexit.register(thread.join)


def complete(cfg: TrainConfig, workdir: Path, records: list[RunRecord], sums: list) -> None:
    """What completes a run once its members ended: their figures (once each) and the
    sweep's summary table and figures (made again only when missing)."""
    from bnlab.analysis import report

    drew = False
    for rec, s in zip(records, sums, strict=True):
        if cfg.figure and s.get("status") in DONE and not s.get("figures"):
            try:
                report.save_run_figures(rec.dir)
            except Exception as e:  # a figure must never cost the run its record
                say(f"could not draw the figures of {rec.dir} ({type(e).__name__}: {e})")
                continue
            s["figures"] = drew = True
            rec.write_summary(**s)
    ended = any(s.get("status") in DONE for s in sums)
    if cfg.is_sweep and ended and (drew or not (workdir / report.SUMMARY_CSV).exists()):
        try:
            paths = report.write_summary(workdir, figures=cfg.figure)
            say(f"sweep summary: {paths[0]}")
        except Exception as e:  # the summary must never cost the sweep its records
            say(f"no sweep summary ({type(e).__name__}: {e})")


def report(
    summaries: list[dict[str, Any]], workdir: str | Path, sweep_dir: str | None = None
) -> float:
    """Say how the run ended; exit 130 if interrupted. Returns what Hydra's sweepers
    rank (larger is better): the best final value of the run's ``objective`` (the metric
    its summaries name, :func:`bnlab.config.validate.objective`: by default the
    validation accuracy, the loss for a task without classes), a loss negated; when no
    member finished, 0.0 for an accuracy and -inf for a loss (never None)."""
    statuses = [s["status"] for s in summaries]
    if len(summaries) > 1:
        counts = ", ".join(f"{statuses.count(k)} {k}" for k in dict.fromkeys(statuses))
        say(f"sweep of {len(summaries)} members: {counts}; records: {workdir}/<member>")
    else:
        s = summaries[0]
        acc = s["final"].get("test_accuracy")
        if s["status"] == "diverged":
            say(f"diverged at step {s['diverged_at']} ({s.get('diverge_reason')}); "
                f"record: {workdir}")  # fmt: skip
        elif s["status"] == "finished":
            rate = s.get("steps_per_sec")
            say(f"finished {s['step']} steps" + (f" ({rate:.0f} steps/s)" if rate else "")
                + (f", test accuracy {acc:.4f}" if acc is not None else "") + f"; record: {workdir}")  # fmt: skip
    if "interrupted" in statuses:
        step = min(s["step"] for s in summaries if s["status"] == "interrupted")
        again = sweep_dir or workdir  # a multirun continues as a whole
        say(f"interrupted at step {step}; continue with: {resume_command(again)}")
        sys.exit(130)
    # chosen on validation where there is a validation split; the test split only reports
    key = next((s["objective"] for s in summaries if s.get("objective")), None) or (
        "val_accuracy" if any("val_accuracy" in s["final"] for s in summaries) else "test_accuracy"
    )  # a record written before summaries named their objective: the accuracy
    sign = 1.0 if key.endswith("accuracy") else -1.0
    vals = [s["final"].get(key) for s in summaries if s["status"] == "finished"]
    return max((sign * v for v in vals if v is not None), default=0.0 if sign > 0 else -math.inf)


def remove_if_untouched(path: str) -> None:
    """The output directory Hydra made for a run that was refused: nothing was written
    there but Hydra's log (the refusal) and the run's lock, so it goes (a record stays)."""
    d = Path(path)
    files = list(d.iterdir()) if d.is_dir() else []
    if all(f.name == ".lock" or f.suffix == ".log" for f in files):
        for f in files:
            f.unlink()
        d.rmdir()


def stopped(workdir: str, sweep_dir: str | None = None) -> None:
    """A signal outside the training loop (start-up, figures, shutdown): one line that
    says what the record holds, exit 130."""
    d = Path(workdir)
    status = None
    try:
        status = RunRecord(d).read_summary()["status"]  # type: ignore[index]
    except Exception:  # none yet (a sweep's members have their own), or half-written
        pass
    if status in DONE:
        say(f"stopped after the run ended ({status}; its record is complete, figures aside: "
            f"the same command draws what is missing); record: {d}")  # fmt: skip
    elif (d / ".hydra").is_dir() or (d / ".hydra-sweep").is_dir():
        say(f"interrupted; continue with: {resume_command(sweep_dir or d)}")
    else:
        remove_if_untouched(str(d))
        say("interrupted before the run started; nothing was recorded")
    sys.exit(130)
