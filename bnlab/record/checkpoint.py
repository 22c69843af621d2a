"""Orbax checkpoints of the train state, for resume after an interrupt or a kill.

Each checkpoint ``checkpoints/<step>/`` carries :data:`CHECKSUMS`, written after
Orbax has finished the save (and, as every checkpoint, after the tables up to its
step): the SHA-256 of the checkpoint's files, and the digest of every table's rows up
to ``step`` (:func:`bnlab.record.integrity.table_digest`). A resume trusts a
checkpoint only when its files match; one without the file (a kill between the save
and the checksum, a record written before checksums) is used only where no verified
one is left. Checkpoints are never deleted here but by Orbax's rotation: the ones a
resume cannot use are moved aside into ``<run dir>/.replaced/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flax import serialization

CHECKSUMS = "bnlab_checksums.json"
REPLACED = ".replaced"  # what a resume or a start-over set aside, never deleted


@functools.cache
def _ocp() -> Any:
    """``orbax.checkpoint``, imported when first needed (start-up: see
    :func:`bnlab.run.session.preload`) and without a root log handler: at import it logs
    through absl (``ArrayHandler``), and absl calls ``logging.basicConfig()`` when the
    root logger has no handler, which then printed every line of Hydra's ``--info``
    and ``--cfg`` twice. A placeholder handler during the import keeps root as it was."""
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        import orbax.checkpoint as ocp
    finally:
        root.removeHandler(guard)
    return ocp


def dir_digest(d: Path) -> str:
    """SHA-256 over the names and bytes of every file under ``d`` (but the checksums)."""
    h = hashlib.sha256()
    for p in sorted(x for x in d.rglob("*") if x.is_file() and x.name != CHECKSUMS):
        h.update(f"{p.relative_to(d).as_posix()}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def set_aside(path: Path, run_dir: Path, name: str) -> Path:
    """Move ``path`` into ``run_dir/.replaced/`` as ``name`` (``name-1``... if taken);
    returns where it went."""
    home = run_dir / REPLACED
    home.mkdir(parents=True, exist_ok=True)
    k, dest = 0, home / name
    while dest.exists():
        k += 1
        dest = home / f"{name}-{k}"
    os.replace(path, dest)
    return dest


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Orbax's own reports of a failing save off (its ERROR logs with tracebacks, and
    the unraisable errors of its async threads): the save's exception says it once."""
    absl, hook = logging.getLogger("absl"), sys.unraisablehook
    level = absl.level
    absl.setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        absl.setLevel(level)
        sys.unraisablehook = hook


SETTLE_S = 60.0  # how long a failed save may take to let its other writes end


class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that, closed with tasks still pending, first lets them end.

    Orbax runs each part of a save in a fresh loop (``asyncio.new_event_loop`` then
    ``run_until_complete`` and ``close``). When one TensorStore write fails (a full
    disk), ``asyncio.gather`` raises at once and the loop is closed while the other
    writes are still in flight; each of those, when it ends, calls the closed loop's
    ``call_soon_threadsafe`` from a TensorStore thread, and TensorStore prints the
    ``RuntimeError: Event loop is closed`` traceback (even after the process said its
    error line). Running the loop until those tasks are done, as ``asyncio.run`` does,
    leaves no write behind that still refers to the loop."""

    def close(self) -> None:
        if not self.is_running() and not self.is_closed():
            pending = asyncio.all_tasks(self)
            if pending:
                done, _ = self.run_until_complete(asyncio.wait(pending, timeout=SETTLE_S))
                for t in done:  # their errors are the failed save's, said once by it
                    if not t.cancelled():
                        t.exception()
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingLoop()


@contextlib.contextmanager
def _settled() -> Iterator[None]:
    """Orbax's save, ended completely before this returns or raises: its event loops
    drain their writes before closing (:class:`_DrainingLoop`), and, when the save
    fails, the threads started meanwhile (Orbax's, one per commit, outlive the
    exception) are joined, so none reports a failure or touches a loop after bnlab
    said its one line. (Only non-daemon threads: the process would wait for them at
    exit anyway.)"""
    before, policy = set(threading.enumerate()), asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    except BaseException:
        deadline = time.monotonic() + SETTLE_S
        for t in threading.enumerate():
            if t not in before and not t.daemon and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        raise
    finally:
        asyncio.set_event_loop_policy(policy)


class Checkpoints:
    """Keeps the latest two checkpoints of a train state under ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory, self.max_to_keep = Path(directory).absolute(), max_to_keep
        self._m = None

    @property
    def _mngr(self) -> Any:
        """Orbax's manager, made at first save (after a resume has set aside what it
        cannot use, so the manager sees only good steps)."""
        if self._m is None:
            ocp = _ocp()
            logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs saves at INFO
            self._m = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
            )
        return self._m

    def latest_step(self) -> int | None:
        return max(self.steps(), default=None)

    def steps(self) -> list[int]:
        """The steps with a checkpoint directory (complete or not), oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir()
                      if p.is_dir() and p.name.isdigit())  # fmt: skip

    def save(self, state: Any, step: int, tables: dict[str, Any] | None = None) -> None:
        """Save ``state`` as step ``step``, wait until it is on disk, then write its
        checksums (with ``tables``: the digests of the tables' rows up to ``step``)."""
        if step in self.steps() and self.verify(step) is None:
            return
        # a failed save (a full disk) is one OSError, not Orbax's tracebacks and late
        # reports of its writer threads
        mngr = self._mngr  # made outside: it sets absl's level, and its threads live on
        with _quiet(), _settled():
            try:
                mngr.save(step, args=_ocp().args.StandardSave(serialization.to_state_dict(state)))
                mngr.wait_until_finished()
            except OSError:
                raise
            except Exception as e:  # tensorstore's errors carry the OS error's number
                code = re.search(r"os_error_code='?(\d+)", str(e))
                if code is None:
                    raise
                raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
        d = self.directory / str(step)
        text = json.dumps({"step": step, "sha256": dir_digest(d), "tables": tables or {}})
        tmp = d / (CHECKSUMS + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, d / CHECKSUMS)

    def checksums(self, step: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.directory / str(step) / CHECKSUMS).read_text())
        except (OSError, ValueError):
            return None

    def verify(self, step: int) -> str | None:
        """None if the checkpoint at ``step`` matches its checksums; else what is wrong
        (``no checksum`` for one written without: a kill right after the save)."""
        d = self.directory / str(step)
        if not any(d.rglob("*")):
            return "is empty"
        sums = self.checksums(step)
        if sums is None:
            return "has no checksum"
        return None if sums.get("sha256") == dir_digest(d) else "fails its checksum"

    def restore(self, like: Any, step: int) -> Any:
        """The state saved at ``step``, with the structure of ``like``."""
        ocp = _ocp()
        target = serialization.to_state_dict(like)
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as c:
            restored = c.restore(self.directory / str(step) / "default",
                                 args=ocp.args.StandardRestore(target))  # fmt: skip
        return serialization.from_state_dict(like, restored)

    def drop_after(self, step: int, run_dir: Path) -> list[int]:
        """Move the checkpoints after ``step`` aside (a run that continues from
        ``step``); returns their steps."""
        moved = [s for s in self.steps() if s > step]
        for s in moved:
            set_aside(self.directory / str(s), run_dir, f"checkpoint-{s}")
        return moved

    def close(self) -> None:
        if self._m is not None:
            with _quiet(), contextlib.suppress(Exception):  # after a failed save, too
                self._m.close()
