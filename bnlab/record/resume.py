"""``python -m bnlab.train resume=DIR``: the command line that continues DIR as it was.

A run directory keeps the command line's overrides it was made with
(``.hydra/overrides.yaml``, a vectorized sweep's in ``.hydra-sweep/``; a Hydra
multirun's in ``multirun.yaml``). :func:`expand` turns ``resume=DIR`` into those
overrides plus the directory, so nothing has to be retyped; arguments given beside it
come after (they may change only what does not change results, see
:data:`bnlab.record.guard.FREE`). ``resume=true|false`` is short for ``resume.enabled=...``.

``resume=DIR`` always continues: the saved ``resume.*`` overrides (a run started
with ``resume.enabled=false``) are not replayed, so the printed "continue with"
command can never start the directory over. The directory is passed to Hydra quoted
(:func:`hydra_quote`): any Unicode, ``=``, ``,``, quote or space in it works.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.errors import UserError


def expand(argv: list[str]) -> list[str]:
    """The command line with ``resume=...`` expanded (unchanged without it)."""
    hits = [a for a in argv if a.startswith("resume=")]
    if not hits:
        return argv
    value = hits[-1].split("=", 1)[1]
    rest = [a for a in argv if not a.startswith("resume=")]
    if value.lower() in ("true", "false"):
        return [*rest, f"resume.enabled={value.lower()}"]
    d = Path(value).expanduser()
    if (d / "multirun.yaml").is_file():
        task = _continuing(OmegaConf.load(d / "multirun.yaml").hydra.overrides.task)
        return [
            "-m",
            *task,
            f"hydra.sweep.dir={hydra_quote(str(d))}",
            *[a for a in rest if a not in ("-m", "--multirun")],
        ]
    for sub in (".hydra-sweep", ".hydra"):
        if (d / sub / "overrides.yaml").is_file():
            saved = _continuing(OmegaConf.load(d / sub / "overrides.yaml"))
            return [*saved, f"hydra.run.dir={hydra_quote(str(d))}", *rest]
    raise UserError(
        f"resume={value}: no bnlab record there (.hydra/overrides.yaml, or multirun.yaml "
        "for a multirun); give the directory a run or sweep wrote"
    )


def _continuing(saved: Any) -> list[str]:
    """The saved overrides but ``resume.*`` (and the output directories, given anew)."""
    out = []
    for o in map(str, saved):
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith(("resume.", "hydra.run.dir", "hydra.sweep.dir")):
            continue
        out.append(o)
    return [*out, "resume.enabled=true"]


def hydra_quote(text: str) -> str:
    """``text`` as one quoted Hydra override value: quotes and the backslashes before
    them escaped, ``${`` kept literal."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return "'" + body.replace("${", "\\${") + "'"
