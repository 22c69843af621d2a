"""Where the config tree is: the one place ``bnlab.train`` and ``bnlab.api`` find it."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The config tree: the wheel's ``bnlab/configs``, else the checkout's ``configs/``
    (absolute, so Hydra finds it however the entry is started: ``python -m``, the
    console script, an import or :mod:`bnlab.api`)."""
    package = Path(__file__).resolve().parents[1]
    for d in (package / "configs", package.parent / "configs"):
        if (d / "train.yaml").is_file():
            return str(d)
    return str(package.parent / "configs")  # Hydra then names what it could not find
