"""Intervals that scale with the run: ``eval_every: auto`` and ``probe.every: auto``.

A default that suits 50,000 steps (an evaluation every 1,000, a probe every 50) leaves
a 300-step run with two points on its learning curve. ``auto`` takes a fraction of
``steps`` instead, so every curve has at least :data:`MIN_POINTS` points; a value set
in the config or on the command line is used as it is.
"""

from __future__ import annotations

from bnlab.config.schema import TrainConfig

MIN_POINTS = 10  # an auto interval leaves at least this many points on its curve
PROBE_MAX = 50  # probe.every=auto: never sparser than the paper's 50 steps (Ioffe & Szegedy)
EVAL_POINTS = 50  # eval_every=auto: about this many evaluations (1,000 at 50,000 steps)


def probe_every(steps: int) -> int:
    """The largest divisor of ``steps`` that is at most ``min(PROBE_MAX, steps / MIN_POINTS)``
    (at least 1): 50 at 50,000 steps, 30 at 300, 1 below 20."""
    top = max(1, min(PROBE_MAX, steps // MIN_POINTS))
    return next(d for d in range(top, 0, -1) if steps % d == 0)


def eval_every(steps: int, unit: int) -> int:
    """About ``steps / EVAL_POINTS`` rounded down to a multiple of ``unit`` (the host
    evaluates between chunks), at least ``unit``: 1,000 at 50,000 steps, 30 at 300."""
    want = max(1, steps // EVAL_POINTS)
    return max(unit, want // unit * unit)


def resolve(cfg: TrainConfig) -> None:
    """Replace ``auto`` in ``probe.every`` and ``eval_every`` by their values for
    ``cfg.steps`` (in place; a positive ``steps`` is checked by the caller)."""
    if not isinstance(cfg.steps, int) or cfg.steps < 1:
        return
    if cfg.probe.every == "auto":
        cfg.probe.every = probe_every(cfg.steps)
    if cfg.eval_every == "auto":
        unit = cfg.chunk_steps if isinstance(cfg.chunk_steps, int) else cfg.probe.every
        cfg.eval_every = eval_every(cfg.steps, unit if isinstance(unit, int) and unit > 0 else 1)
