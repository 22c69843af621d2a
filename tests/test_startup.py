"""The command line answers quickly: ``--help`` and tab completion import nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys

from trainer import ROOT


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})  # fmt: skip


def test_help_is_hydras_text_without_composing_or_jax():
    """bnlab's --help lists the config tree itself: the same text as Hydra's help
    (which composes the config once per option), and neither JAX nor Hydra's
    composition is loaded for it."""
    fast = _py("import sys\nfrom bnlab.train import main\nmain(['--help'])\n"
               "assert 'jax' not in sys.modules, 'jax imported for --help'")  # fmt: skip
    assert fast.returncode == 0, fast.stderr
    hydra = _py(
        "import sys\nsys.argv = ['bnlab-train', '--help']\nfrom bnlab.train import app\napp()"
    )
    assert hydra.returncode == 0, hydra.stderr
    assert fast.stdout.replace("python -c", "bnlab-train") == hydra.stdout
    assert "norm: batch_renorm, bn, bn_ghost" in fast.stdout


def test_tab_completion_does_not_import_jax():
    done = _py("import sys\nfrom bnlab.train import main\n"
               "try:\n    main(['-sc', 'query=bash'])\nexcept SystemExit:\n    pass\n"
               "assert 'jax' not in sys.modules, 'jax imported for a completion'",
               COMP_LINE="bnlab-train optimizer.l", COMP_POINT="23")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "optimizer.lr=" in done.stdout
