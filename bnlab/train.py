"""``python -m bnlab.train`` and ``bnlab-train``: the Hydra entry point.

Hydra composes ``configs/train.yaml`` (the checkout's ``configs/`` tree; an installed
wheel carries the same tree as ``bnlab/configs``) with the command line, and
:func:`bnlab.run.driver.train_and_evaluate` trains and writes the record into Hydra's
output directory. ``resume=DIR`` continues a run or sweep directory with the settings
it was made with. Mistakes in the command line or the config are one
``bnlab: error: ...`` line, exit 2.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: time-to-first-chunk counts them

import os  # noqa: E402
import signal  # noqa: E402


def _before_start(signum: int, frame: object) -> None:
    """SIGINT or SIGTERM while the modules load: one line, exit 130 (nothing written)."""
    os.write(2, b"bnlab: interrupted before the run started; nothing was recorded\n")
    os._exit(130)


if __name__ == "__main__":  # the command, not an import: signals from the first moment
    for _s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_s, _before_start)

import sys  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bnlab import config  # noqa: E402
from bnlab.config.tree import config_dir  # noqa: E402
from bnlab.errors import UserError, say  # noqa: E402


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def app(cfg: DictConfig) -> float:
    """One job: train, report, and return what Hydra's sweepers rank."""
    from bnlab.run import driver, session
    from bnlab.run.multirun import summary_after_failure

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        session.setup_process(cfg)
        summaries = driver.train_and_evaluate(
            cfg, hc.runtime.output_dir, list(hc.overrides.task), hydra_cfg=hc, t0=_T0
        )
    except UserError as e:
        say(f"error: {e}")
        session.remove_if_untouched(hc.runtime.output_dir)
        if multirun:
            summary_after_failure(hc.sweep.dir, bool(cfg.get("figure", True)))
        sys.exit(2)
    except KeyboardInterrupt:  # a signal outside the training loop's own handling
        session.stopped(hc.runtime.output_dir, hc.sweep.dir if multirun else None)
    except Exception:
        if multirun:
            summary_after_failure(hc.sweep.dir, bool(cfg.get("figure", True)))
        raise
    try:
        return session.report(summaries, hc.runtime.output_dir, hc.sweep.dir if multirun else None)
    except KeyboardInterrupt:
        session.stopped(hc.runtime.output_dir, hc.sweep.dir if multirun else None)
        raise  # not reached: stopped exits


def main(argv: list[str] | None = None) -> None:
    """The console entry: ``resume=DIR`` expanded; Hydra's own errors (a misspelled key,
    a bad choice) as one line."""
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:  # the groups and options, without composing
        from bnlab.config.help import text

        print(text(config_dir()))
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bnlab.errors import one_line
    from bnlab.record.resume import expand

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let them reach us, not Hydra's printer
    import logging

    # a log line that cannot be written (train.log on a full disk) is not a traceback:
    # the one error line says what failed
    logging.raiseExceptions = False
    # hydra/launcher=ray_cluster: Ray's workers use this environment (with its extras),
    # not a fresh one Ray would build for a `uv run` driver (configs/hydra/launcher/)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    for s in (signal.SIGINT, signal.SIGTERM):  # both stop a run the same way
        signal.signal(s, _interrupt)
    sys.unraisablehook = _redeliver(sys.unraisablehook)
    try:
        sys.argv[1:] = expand(args)
        app()
    except KeyboardInterrupt:  # outside a job: before Hydra made its directory, or after
        say("interrupted (a run directory's summary.json says what it holds)")
        sys.exit(130)
    except UserError as e:
        say(f"error: {e}")
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as e:
        say(f"error: {one_line(e)}")
        sys.exit(2)
    except OSError as e:  # e.g. Hydra making an output directory where it cannot
        say(f"error: {e.strerror or type(e).__name__}: {e.filename or ''}")
        sys.exit(2)
    except ValueError as e:  # Hydra's check of its own flags (e.g. -m with --info)
        cause = e.__cause__
        if isinstance(cause, OSError) and str(e).startswith("Unable to configure handler"):
            from pathlib import Path

            from bnlab.record.guard import write_problem  # its log file, in the run dir

            say(f"error: {write_problem(Path(cause.filename or '.').parent, cause)}")
            sys.exit(2)
        if not str(e).startswith("Only one of --run"):
            raise
        say(f"error: {one_line(e)}")
        sys.exit(2)


def _interrupt(signum: int, frame: Any) -> None:
    if _in_callback(frame):  # an exception there would be printed and lost: again, later
        import _thread

        _thread.start_new_thread(_thread.interrupt_main, ())
        return
    raise KeyboardInterrupt


def _in_callback(frame: Any) -> bool:
    """Whether ``frame`` runs inside a garbage-collector callback (JAX has one) or the
    unraisable hook below, where a KeyboardInterrupt cannot propagate."""
    import gc

    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if code in codes or (code.co_name == "handle" and code.co_filename == __file__):
            return True
        frame = frame.f_back
    return False


def _redeliver(hook):
    """A signal whose KeyboardInterrupt landed where Python can only print it (a garbage
    collector callback: "Exception ignored in ... Traceback") is delivered again to the
    main thread, not printed and lost."""

    def handle(unraisable):
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            import _thread

            # from another thread, started without waiting on it (a wait here would take
            # the signal again): the main thread takes it once out of this callback
            _thread.start_new_thread(_thread.interrupt_main, ())
            return
        hook(unraisable)

    return handle


config.register()

if __name__ == "__main__":
    main()
