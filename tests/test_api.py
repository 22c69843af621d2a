"""bnlab.api: the README's example runs, and equals the same sweep through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import pandas as pd
import pytest
from trainer import ROOT, cli, tables

from bnlab import api
from bnlab.errors import UserError

CACHE = "/tmp/bnlab-test-api-cache"  # BNLAB_CACHE of both runs: the second compiles from it


def readme_block(tag: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {tag} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no python block tagged {tag}"
    return m.group(1)


def test_readme_example_equals_the_command_line(tmp_path):
    """The README's two blocks in a fresh process (a model class defined in it, a
    2-lr sweep) give the tables of the same sweep run by python -m bnlab.train, and
    the checkpoint read back into the model gives the run's final test accuracy."""
    model, train = readme_block("api-model"), readme_block("api-train")
    (tmp_path / "readme_net.py").write_text(model)
    env = dict(os.environ, BNLAB_CACHE=CACHE)
    (tmp_path / "api").mkdir()
    res = subprocess.run([sys.executable, "-c", model + train], cwd=tmp_path / "api", env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (api_dir,) = (tmp_path / "api" / "outputs").glob("*/*")
    assert "vectorized sweep: 2 members" in (api_dir / "train.log").read_text()
    summary = json.loads((api_dir / "0" / "summary.json").read_text())
    # the sites in the order the model calls them (the figures' panel order)
    assert summary["sites"] == ["BatchNorm_0/in", "BatchNorm_0/out", "Dense_1/in"]
    over = ["data=digits", "steps=300", "sweep.lr=[0.05,0.5]", "model._target_=readme_net.Net",
            f"import_path=[{tmp_path}]", f"hydra.run.dir={tmp_path / 'cli'}"]  # fmt: skip
    ok = cli(over, env=env)
    assert ok.returncode == 0, ok.stderr
    for member in ("0", "1"):
        mine, theirs = tables(api_dir / member), tables(tmp_path / "cli" / member)
        assert sorted(mine) == sorted(theirs)
        for name, t in mine.items():
            pd.testing.assert_frame_equal(t, theirs[name], check_exact=False, atol=1e-6)
    acc = float(re.search(r"test accuracy ([0-9.]+)", res.stdout).group(1))
    final = pd.read_csv(api_dir / "summary.csv").set_index("run")["final_test_accuracy"]
    assert acc == pytest.approx(final[1], abs=1e-6)


class Wide(nn.Module):
    features: int = 8
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features)(x)


def test_keyword_arguments_and_models_become_overrides():
    assert api.as_overrides({"steps": 300, "optimizer": {"lr": 0.1}, "sweep.lr": [0.1, 1],
                             "figure": False, "compile_cache": None}) == [
        "steps=300", "optimizer.lr=0.1", "sweep.lr=[0.1,1]", "figure=false", "compile_cache=null",
    ]  # fmt: skip
    assert api.model_overrides(Wide) == ["model._target_=test_api.Wide"]
    assert api.model_overrides(Wide(features=4)) == [
        "model._target_=test_api.Wide",
        "++model.features=4",
    ]

    def local():
        class Local(nn.Module):
            def __call__(self, x):
                return x

        return Local

    cls = local()
    name = api.target(cls)
    assert name.startswith(api.MODULE + ".")
    from bnlab.models.activations import locate

    assert locate(name) is cls  # found again by name in this process


def test_a_mistake_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no_such_key") as e:
        api.train("no_such_key=1", workdir=tmp_path / "r")
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="steps=-1 must be a positive integer"):
        api.train("data=digits", steps=-1, workdir=tmp_path / "r")


def test_load_variables_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="has no checkpoint"):
        api.load_variables(tmp_path)


def test_an_nnx_model_trains_and_loads_back(tmp_path):
    """An NNX class (BatchNorm hard-coded) through the API, its checkpoint read back into
    a fresh instance: its accuracy on the test split is the run's final one."""
    import jax.numpy as jnp
    from flax import nnx
    from own_models import NNXFlaxBN
    from sklearn.datasets import load_digits
    from trainer import COMPILE_CACHE

    run = api.train("data=digits", model=NNXFlaxBN, workdir=tmp_path / "r", steps=100,
                    progress=False, figure=False, compile_cache=str(COMPILE_CACHE),
                    **{"+model.din": 64, "data.flatten": True, "probe.every": 50})  # fmt: skip
    assert run.summary["status"] == "finished"
    model = api.load_into(NNXFlaxBN(64, rngs=nnx.Rngs(1)), tmp_path / "r")
    model.eval()
    x, y = load_digits(return_X_y=True)
    acc = float(
        jnp.mean(jnp.argmax(model(jnp.asarray(x[-297:] / 16, jnp.float32)), -1) == y[-297:])
    )
    assert acc == pytest.approx(run.summary["final"]["test_accuracy"], abs=1e-6)
