"""The host side of a training process, shared by a single run and a vectorized sweep.

Around the compiled chunk (:mod:`bnlab.loop`) the host splits the steps into chunks,
shows a progress bar, turns SIGTERM into an interrupt (so a scheduler's stop saves a
checkpoint like Ctrl-C does) and draws the figures at the end. :mod:`bnlab.train`
and :mod:`bnlab.sweep` both use these, so neither imports the other.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab import data
from bnlab.console import UserError, say

log = logging.getLogger("bnlab")


def on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise ``KeyboardInterrupt`` (cluster schedulers stop jobs so)."""
    raise KeyboardInterrupt


def chunk_lengths(steps: int, chunk_steps: int, every: int) -> list[int]:
    """The lengths of the compiled chunks that make ``steps`` (the last may be shorter).

    Raises :class:`UserError` unless ``steps`` and ``chunk_steps`` are multiples of the
    probe interval ``every`` (a chunk is whole probe intervals).
    """
    if steps % every:
        raise UserError(f"steps={steps} must be a multiple of probe.every={every}")
    if chunk_steps % every:
        raise UserError(f"chunk_steps={chunk_steps} must be a multiple of probe.every={every}")
    full, rest = divmod(steps, chunk_steps)
    return [chunk_steps] * full + ([rest] if rest else [])


def load_data(cfg: Any) -> data.Dataset:
    """The dataset of ``cfg.data``, announced in one line; a missing or bad dataset is a
    :class:`UserError` (its message says where bnlab looked and what to do)."""
    try:
        ds = data.load(**OmegaConf.to_container(cfg.data))
    except data.DataError as e:
        raise UserError(str(e)) from None
    say(
        f"data {ds.name}: {len(ds.train_y)} train / {len(ds.test_y)} test, "
        f"probe batch {len(ds.probe_x)}; from {ds.source}"
    )
    return ds


def progress_bar(cfg: Any, initial: int) -> Any:
    """A tqdm bar over ``cfg.steps`` from ``initial``; silent with ``progress=false``
    or when stderr is not a terminal (logs and captured output stay clean)."""
    from tqdm.auto import tqdm

    disable = not cfg.progress or not sys.stderr.isatty()
    return tqdm(total=cfg.steps, initial=initial, unit="step", disable=disable, dynamic_ncols=True)


def save_figures(workdir: Path) -> None:
    """Draw a run's figures into ``workdir/figures``; a failure is one line, never fatal
    (a figure must never cost the run its record)."""
    from bnlab import report

    try:
        paths = report.save_run_figures(workdir)
    except Exception as e:
        say(f"could not draw the run's figures ({type(e).__name__}: {e})")
        return
    for p in paths:
        log.info("figure: %s", p)
