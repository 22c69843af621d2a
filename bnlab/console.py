"""What a run tells its user: one-line messages on stderr, and the error that ends it.

:class:`UserError` is a mistake in the config or the environment; the entry point
(:func:`bnlab.train.main`) reports it as one ``bnlab: error: ...`` line and exits 2.
It lives here, not in the entry point, so that :mod:`bnlab.sweep` raises the very
class the entry point catches (under ``python -m bnlab.train`` the entry module is
``__main__``, and a second import of ``bnlab.train`` would define another class).
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake in the config or the environment: reported in one line, exit 2."""


def say(msg: str) -> None:
    """Print ``bnlab: msg`` on stderr, flushed (a killed job still shows it)."""
    print(f"bnlab: {msg}", file=sys.stderr, flush=True)
