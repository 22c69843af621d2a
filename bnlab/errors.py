"""What a run tells its user: one-line messages on stderr, and the error that ends it.

:class:`UserError` is a mistake in the config, the data or the environment; the entry
point reports it as one ``bnlab: error: ...`` line and exits 2. Every module that can
find such a mistake raises this class (or a subclass), so the entry point catches all.
"""

from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("bnlab.say")  # say()'s lines, for a run's train.log (its own
LOG.propagate = False  # handlers: they are on stderr already, not for the root's console)


class UserError(Exception):
    """A mistake in the config, the data or the environment: one line, exit 2."""


def say(msg: str) -> None:
    """Print ``bnlab: msg`` on stderr, flushed (a killed job still shows it), and log it
    on the ``bnlab.say`` logger (the run's ``train.log``; nothing without a handler)."""
    print(f"bnlab: {msg}", file=sys.stderr, flush=True)
    LOG.info(msg)


def one_line(e: BaseException) -> str:
    """The first line of an exception (and of its cause): a Hydra or OmegaConf error
    as the one ``bnlab: error:`` line."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = first.removeprefix("Error merging override ")
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        first = f"{first.rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    return first
