"""``bnlab-train --help`` without Hydra's composition.

Hydra builds its help by composing the config once per option of every group
(seconds of deep copies, 6-8 s on the 2-core machine); bnlab's help template
(``configs/hydra/help/bnlab.yaml``) shows only the groups and their options, which a
listing of the config tree gives at once. The text is the template's, as Hydra would
fill it (``tests/test_package.py`` compares the two).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml


def groups(config_dir: str | Path) -> dict[str, list[str]]:
    """The config groups of the tree (``hydra`` and its subgroups left out) and their
    options, sorted as Hydra lists them."""
    root = Path(config_dir)
    out = {}
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        rel = d.relative_to(root).as_posix()
        if rel == "hydra" or rel.startswith("hydra/"):
            continue
        options = sorted(f.stem for f in d.glob("*.yaml"))
        if options:
            out[rel] = options
    return out


def text(config_dir: str | Path) -> str:
    """The help text of ``configs/hydra/help/bnlab.yaml`` with its groups filled in."""
    root = Path(config_dir)
    h = yaml.safe_load((root / "hydra" / "help" / "bnlab.yaml").read_text())

    def fill(s: str) -> str:
        return re.sub(r"\$\{hydra\.help\.(\w+)\}", lambda m: fill(str(h[m.group(1)])), s)

    listing = "\n".join(f"{g}: {', '.join(o)}" for g, o in groups(root).items())
    return fill(h["template"]).replace("$APP_CONFIG_GROUPS", listing + "\n")
