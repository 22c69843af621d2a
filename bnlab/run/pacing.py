"""How a run paces itself and shows it: the auto chunk length, the progress bar, and
the interval the loop keeps from a record it continues."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.config import TrainConfig

CHUNK_SECONDS = 7.0  # chunk_steps=auto: a chunk's target running time


def auto_chunk(seconds_per_step: float, every: int, cfg: TrainConfig) -> int:
    """The chunk length for ``chunk_steps=auto``: the largest multiple of ``probe.every``
    dividing ``eval_every`` and ``checkpoint_every`` that runs in about CHUNK_SECONDS."""
    g = math.gcd(cfg.eval_every, cfg.checkpoint_every)
    target = CHUNK_SECONDS / max(seconds_per_step, 1e-9)
    fits = [d for d in range(every, g + 1, every) if g % d == 0 and d <= target]
    return max(fits, default=every)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where tqdm.auto draws a widget)."""
    return "ipykernel" in sys.modules


def progress_bar(cfg: TrainConfig, initial: int) -> Any:
    """A tqdm bar over ``cfg.steps`` (a widget in a notebook); silent with
    ``progress=false``, or when stderr is neither a terminal nor a notebook's."""
    from tqdm.auto import tqdm

    disable = not cfg.progress or not (sys.stderr.isatty() or in_notebook())
    return tqdm(total=cfg.steps, initial=initial, unit="step", disable=disable, dynamic_ncols=True)


def keep_saved_intervals(cfg: TrainConfig, saved: Path) -> None:
    """``probe.every`` and ``eval_every`` left at ``auto`` take the values of the
    record ``saved`` (its ``config.yaml``) continues: a run continued with more
    steps keeps its intervals instead of being refused for new ones."""
    if not saved.is_file():
        return
    try:
        old = OmegaConf.load(saved)
        every, ev = old.probe.every, old.eval_every
    except Exception:  # the guard says what is wrong with it
        return
    if cfg.probe.every == "auto" and isinstance(every, int):
        cfg.probe.every = every
    if cfg.eval_every == "auto" and isinstance(ev, int):
        cfg.eval_every = ev
