"""Orbax checkpoints of the train state, for resume after an interrupt or a kill."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from flax import serialization

from bnlab.errors import say


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


class Checkpoints:
    """Keeps the latest two checkpoints of a train state under ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory, self.max_to_keep = Path(directory).absolute(), max_to_keep
        self._m = None

    @property
    def _mngr(self) -> Any:
        """Orbax's manager, made at first use (a fresh run needs it only at its first
        checkpoint)."""
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
        """The steps with a checkpoint, oldest first (none, without orbax, where there
        is no checkpoint folder yet)."""
        if self._m is None and not self.directory.is_dir():
            return []
        return sorted(self._mngr.all_steps())

    def save(self, state: Any, step: int) -> None:
        """Save ``state`` as step ``step`` and wait until it is on disk."""
        if self.latest_step() == step:
            return
        self._mngr.save(step, args=_ocp().args.StandardSave(serialization.to_state_dict(state)))
        self._mngr.wait_until_finished()

    def restore(self, like: Any, step: int) -> Any:
        """The state saved at ``step``, with the structure of ``like``."""
        target = serialization.to_state_dict(like)
        restored = self._mngr.restore(step, args=_ocp().args.StandardRestore(target))
        return serialization.from_state_dict(like, restored)

    def drop_after(self, step: int) -> None:
        """Delete the checkpoints after ``step`` (a run that continues from ``step``)."""
        for s in self.steps():
            if s > step:
                self._mngr.delete(s)

    def restore_latest(self, like: Any, at_most: int) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest readable checkpoint at or before ``at_most``;
        an unreadable one is skipped with a warning. None if there is none."""
        for step in reversed([s for s in self.steps() if s <= at_most]):
            try:
                return step, self.restore(like, step)
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0][:120]
                say(f"warning: the checkpoint at step {step} is unreadable "
                    f"({type(e).__name__}: {first}); trying an older one")  # fmt: skip
        return None

    def close(self) -> None:
        self._mngr.close()
