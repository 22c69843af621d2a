"""Any Flax model through ``model._target_``: a ResNet written here from the paper,
NNX against linen, Flax's BatchNorm substituted, site globs, one-line errors."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from trainer import COMPILE_CACHE, QUICK, ROOT, cli, compose, engine_for, tables, train

from bnlab import config
from bnlab.engine.step import unstack
from bnlab.errors import UserError
from bnlab.models import build_network, check_model
from bnlab.record import tables as record

TESTS = ROOT / "tests"
OWN = ["model=own", f"import_path=[{TESTS}]"]


@pytest.fixture(scope="module", autouse=True)
def _compile_cache():
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


# --------------------------------------------------------------------------- a paper ResNet


class PaperBlock(nn.Module):
    """He et al. 2016, Sec. 4.2: two 3x3 convs, BN after each, ReLU; identity shortcut,
    or (option A) a strided subsample zero-padded to the new width."""

    filters: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        y = nn.Conv(self.filters, (3, 3), self.stride, use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=not train)(y)
        if x.shape != y.shape:
            x = x[:, :: self.stride, :: self.stride]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.filters - x.shape[-1])))
        return nn.relu(x + y)


class PaperResNet(nn.Module):
    """3x3 conv of 16 filters, 3 stages of n blocks (16, 32, 64 filters, stride 2 into
    stages 2 and 3), global average pool, dense; depth 6n + 2. ``width`` scales the
    filters (16 in the paper). The first conv has a bias, for the stop-gradient check."""

    n: int = 1
    width: int = 16
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.width, (3, 3), name="conv0")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn0")(x))
        for stage in range(3):
            for b in range(self.n):
                stride = 2 if stage > 0 and b == 0 else 1
                x = PaperBlock(self.width * 2**stage, stride)(x, train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


PAPER = ["model=own", "model._target_=test_own_models.PaperResNet", "+model.width=4",
         f"import_path=[{TESTS}]"]  # fmt: skip


def test_paper_resnet_trains_through_target(tmp_path, record_property):
    """300 steps on 8x8 digits through ``model._target_`` with Flax's own BatchNorm
    (bnlab's substituted): it learns, and the activation table holds every BN site's
    input and output (substituted BN normalizes: per channel mean 0 at ``bn0/out``)."""
    over = [*QUICK, *PAPER, "steps=300", "chunk_steps=150", "eval_every=150",
            "checkpoint_every=150", "batch_size=32", "data.probe_size=64",
            "optimizer=momentum", "optimizer.lr=0.05"]  # fmt: skip
    (summary,) = train(over, tmp_path)
    assert summary["status"] == "finished"
    t = tables(tmp_path)
    acc = t["scalars.parquet"].query("name == 'test_accuracy'").set_index("step")["value"]
    record_property("summary", f"paper ResNet-8 (width 4), 300 steps: test accuracy {acc[300]:.3f}")
    assert acc[300] > 0.5 > acc[0]
    acts = t["activations.parquet"]
    bn = acts[acts["layer"].str.contains("BatchNorm|bn0")]
    names = set(bn["layer"] + "/" + bn["site"])
    blocks = [f"PaperBlock_{i}/BatchNorm_{j}" for i in range(3) for j in range(2)]
    assert names == {f"{b}/{s}" for b in ["bn0", *blocks] for s in ("in", "out")}
    assert sorted(acts["step"].unique()) == list(range(0, 301, 50))
    layers = set(t["layers.parquet"]["layer"])
    assert {"conv0", "bn0", "Dense_0", "PaperBlock_2/Conv_1"} <= layers
    assert (
        t["layers.parquet"].query("layer == 'bn0' and stat == 'running_var_mean'")["value"] > 0
    ).all()


@pytest.mark.parametrize("variant", ["bn", "bn_nostatgrad"])
def test_stop_gradient_bn_has_the_analytic_gradient(variant):
    """Ioffe & Szegedy 2015, Sec. 2, on the paper ResNet's first layer: with the batch
    statistics outside the gradient, BN is the affine map h -> gamma (h - mu) / sigma +
    beta, so the conv bias b before it gets dL/db = gamma / sigma * dL/dbeta per channel
    (sigma^2 = var(h) + eps over N, H, W); through the statistics, dL/db = 0 (BN removes
    any shift of h)."""
    e, states, cfg = engine_for([*QUICK, *PAPER, f"norm={variant}", "batch_size=32",
                                 "data.probe_size=64"])  # fmt: skip
    st = unstack(states, 0)
    x, y = e.data["train_x"][:32], e.data["train_y"][:32]
    grads = jax.jit(jax.grad(lambda p: e.learner.loss_fn(p, st.batch_stats, x, y)[0]))(st.params)
    apply = jax.jit(lambda p, b: e.learner.probe_net.apply(p, b, x, train=True, capture=True))
    _, _, sites = apply(st.params, st.batch_stats)
    h = np.asarray(sites["bn0/in"], np.float64)
    sigma = np.sqrt(h.var(axis=(0, 1, 2)) + 1e-5)
    gamma = np.asarray(st.params["bn0"]["scale"])
    db, dbeta = np.asarray(grads["conv0"]["bias"]), np.asarray(grads["bn0"]["bias"])
    assert np.abs(dbeta).max() > 1e-4
    if variant == "bn":
        np.testing.assert_allclose(db, 0, atol=1e-4 * np.abs(dbeta).max())
    else:
        np.testing.assert_allclose(db, gamma / sigma * dbeta, rtol=1e-4, atol=1e-8)


# --------------------------------------------------------------------------- NNX = linen


def test_nnx_mlp_equals_linen_mlp(tmp_path, record_property):
    """The Fig. 1 MLP in NNX (tests/own_models.py) from the linen MLP's initial
    parameters: 200 steps, every table equal (rtol 1e-5)."""
    common = [*QUICK, "steps=200", "chunk_steps=200", "batch_size=30", "data.probe_size=100",
              "probe.units=[0,3]"]  # fmt: skip
    linen_over = [*common, "model.features=[32,16]"]
    nnx_over = [*common, *OWN, "model._target_=own_models.NNXMLP", "+model.din=64",
                "+model.features=[32,16]", "+model.init_std=0.1"]  # fmt: skip
    runs, start = {}, None
    for name, over in (("linen", linen_over), ("nnx", nnx_over)):
        e, states, _ = engine_for(over)
        assert e.learner.net.kind == name
        if start is None:  # the linen MLP's initial state
            start = jax.device_get((states.params, states.batch_stats))
        params, bs = jax.tree.map(jnp.asarray, start)  # fresh arrays: chunks donate states
        states = states.replace(params=params, batch_stats=bs)
        rec = record.RunRecord(tmp_path / name)
        record.metrics_rows(rec, jax.device_get(e.measure(states)).member(0))
        states, m = e.chunk(states, 0, 200)
        record.metrics_rows(rec, jax.device_get(m).member(0))
        rec.write_tables()
        runs[name] = tables(tmp_path / name)
    worst = 0.0
    for t in runs["linen"]:
        a, b = runs["linen"][t], runs["nnx"][t]
        pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
        np.testing.assert_allclose(b["value"], a["value"], rtol=1e-5, atol=1e-6, err_msg=t)
        worst = max(worst, float(np.max(np.abs(a["value"] - b["value"]).to_numpy(), initial=0)))
    assert set(runs["nnx"]["activations.parquet"]["site"]) == {"prenorm", "pre", "post"}
    record_property("summary", f"NNX vs linen MLP, 200 steps: max abs diff {worst:.1e}")


# --------------------------------------------------------------------------- substitution


def _norm(name: str):
    return config.typed(compose([*QUICK, f"norm={name}"])).norm


def test_hard_coded_flax_batchnorm_is_substituted_and_equal():
    """A linen model hard-coding ``nn.BatchNorm``: under ``norm=bn`` bnlab's BN in its
    place gives the original's outputs and running statistics; ``bn_noaffine`` drops
    gamma and beta, ``none`` makes it the identity (no variables)."""
    from own_models import FlaxBNMLP

    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1)) * 2 + 1
    model = FlaxBNMLP()
    v = model.init(jax.random.key(0), x, train=False)
    net = build_network({"_target_": "own_models.FlaxBNMLP"}, _norm("bn"), 10)
    params, bs = net.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(v["params"])
    jax.tree.map(np.testing.assert_array_equal, params, v["params"])
    want, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    got, new_bs, sites = net.apply(params, bs, x, train=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 new_bs, upd["batch_stats"])  # fmt: skip
    np.testing.assert_allclose(net.apply(params, new_bs, x, train=False)[0],
                               model.apply({**v, **upd}, x, train=False), rtol=1e-6, atol=1e-6)  # fmt: skip
    p2, _ = build_network({"_target_": "own_models.FlaxBNMLP"}, _norm("bn_noaffine"), 10).init(
        jax.random.key(0), x)  # fmt: skip
    assert "BatchNorm_0" not in p2 and "Dense_0" in p2
    none = build_network({"_target_": "own_models.FlaxBNMLP"}, _norm("none"), 10)
    none.discover(jax.ShapeDtypeStruct(x.shape, x.dtype))
    p3, bs3 = none.init(jax.random.key(0), x)
    assert bs3 == {} and "BatchNorm_0" not in p3
    _, _, s3 = none.apply(p3, bs3, x, train=True, capture=True)
    assert "BatchNorm_0/in" not in s3  # an identity has no input site of its own
    h = x.reshape((16, -1)) @ p3["Dense_0"]["kernel"] + p3["Dense_0"]["bias"]
    np.testing.assert_allclose(s3["BatchNorm_0/out"], h, rtol=1e-6, atol=1e-6)


def test_hard_coded_nnx_batchnorm_is_substituted_and_equal():
    """An NNX model hard-coding ``nnx.BatchNorm`` (in an ``nnx.List``) runs bnlab's NNX BN
    under ``norm=bn``: the original's outputs and running statistics in both modes."""
    from flax import nnx
    from own_models import NNXFlaxBN

    x = jax.random.normal(jax.random.key(1), (16, 64)) * 2 + 1
    net = build_network({"_target_": "own_models.NNXFlaxBN", "din": 64}, _norm("bn"), 10)
    params, bs = net.init(jax.random.key(0), x)
    orig = NNXFlaxBN(64, rngs=nnx.Rngs(jax.random.key(0)))
    assert type(orig.layers[1]) is nnx.BatchNorm
    got, new_bs, _ = net.apply(params, bs, x, train=True)
    want = orig(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_bs["layers"]["1"]["var"], orig.layers[1].var[...], rtol=1e-6)
    orig.eval()
    got_eval = net.apply(params, new_bs, x, train=False)[0]
    np.testing.assert_allclose(got_eval, orig(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- sites and errors


def test_site_globs_select_exactly_the_named_sites():
    over = [*QUICK, "model=resnet", "model.depth=8", "model.width=4", "batch_size=20",
            "data.probe_size=20", "probe.sites=['*/norm2/*','norm0/out']"]  # fmt: skip
    e, _, _ = engine_for(over)
    layout = e.learner.probe_net.layout
    assert layout.selected == (
        "norm0/out",
        *(f"stage{s}/block1/norm2/{io}" for s in (1, 2, 3) for io in ("in", "out")),
    )
    assert len(layout.sites) == 2 + 3 * 6 + 1  # norm0; per block conv1, norm1, conv2, norm2; head


def test_a_glob_matching_nothing_is_a_one_line_error(tmp_path):
    res = cli([*QUICK, "probe.sites=['layer1/*','nope*']", f"hydra.run.dir={tmp_path}"],
              timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("bnlab: error: probe.sites: 'nope*' matches none of the model's 9 sites")
    assert "Traceback" not in res.stderr and not (tmp_path / ".hydra").exists()


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        (
            ["model._target_=own_models.FlaxBNMLP", "+model.widht=3"],
            "model.widht: own_models.FlaxBNMLP takes no argument 'widht' (it takes: width)",
        ),
        (["model._target_=own_models.NNXFlaxBN"], "own_models.NNXFlaxBN needs model.din"),
        (["model._target_=own_models.Nope"], "cannot import own_models.Nope"),
        (["model._target_=jax.nn.relu"], "is not a flax.linen.Module or flax.nnx.Module"),
    ],
    ids=["unknown-key", "missing-key", "no-class", "not-a-module"],
)
def test_model_errors_are_one_line(over, needle):
    cfg = config.typed(compose([*QUICK, *OWN, *over]))
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_model(cfg.model, cfg.import_path)


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        (
            "own_models.TupleOut",
            "returns a tuple of 2; bnlab needs one array of logits, shape (60, 10)",
        ),
        ("own_models.SevenOut", "returns shape (60, 7) for a batch of 60; the data has 10 classes"),
    ],
    ids=["tuple", "width"],
)
def test_a_model_output_that_is_not_the_logits_is_a_one_line_error(target, needle):
    """Before: a tuple was a traceback, seven outputs for ten classes 'diverged at step 1'."""
    with pytest.raises(UserError, match=re.escape(needle)):
        engine_for([*QUICK, *OWN, f"model._target_={target}"])


def test_norm_on_a_model_without_batchnorm_is_one_warning_line(capsys):
    engine_for([*QUICK, *OWN, "model._target_=own_models.NoBN"])
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "no BatchNorm" in ln]
    assert warned == ["bnlab: warning: model._target_=own_models.NoBN has no BatchNorm layer, so "
                      "norm=bn changes nothing in it (norm=none records what runs)"]  # fmt: skip
    engine_for([*QUICK, *OWN, "model._target_=own_models.NoBN", "norm=none"])
    assert "no BatchNorm" not in capsys.readouterr().err


def test_target_on_a_preset_drops_the_presets_keys():
    """``model._target_=... +model.width=...`` on the default ``model=mlp``: the MLP's own
    keys are not passed to the new class, the added one is."""
    cfg = config.typed(compose([*QUICK, "model._target_=own_models.FlaxBNMLP", "+model.width=8"]))
    assert cfg.model == {"_target_": "own_models.FlaxBNMLP", "width": 8}
    cfg = config.typed(compose([*QUICK, "model=resnet", "model.depth=56"]))
    assert cfg.model["depth"] == 56 and cfg.model["_target_"] == "bnlab.models.ResNet"


# --------------------------------------------------------------------------- the README's example


def test_readme_own_model_example_runs_as_written(tmp_path, monkeypatch):
    """The README's own-model example: its code is ``examples/my_nets.py`` verbatim, and
    its command (fewer steps) trains it with bnlab's BN substituted for ``nnx.BatchNorm``
    and records the sites the README names."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own model") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code == (ROOT / "examples" / "my_nets.py").read_text()
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    args = shlex.split(command)
    assert args[:5] == ["uv", "run", "python", "-m", "bnlab.train"] and "steps=500" in args
    args = [a for a in args[5:] if a != "steps=500"]
    monkeypatch.chdir(ROOT)  # import_path=[examples] is relative to the working dir
    over = [*args, "steps=100", "eval_every=100", "progress=false", "figure=false",
            f"compile_cache={COMPILE_CACHE}", "chunk_steps=100"]  # fmt: skip
    (summary,) = train(over, tmp_path)
    assert summary["status"] == "finished"
    t = tables(tmp_path)
    acts = t["activations.parquet"]
    assert set(acts["layer"] + "/" + acts["site"]) == {
        "bn1/in", "bn1/out", "bn2/in", "bn2/out", "fc2/in", "head/in"
    }  # fmt: skip
    assert set(t["layers.parquet"]["layer"]) == {"fc1", "bn1", "fc2", "bn2", "head"}
    cfg = config.typed(compose(args))
    assert not cfg.norm.stats_grad  # norm=bn_nostatgrad, substituted for nnx.BatchNorm
