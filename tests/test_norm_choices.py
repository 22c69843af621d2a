"""The normalizers beside BN as ``norm=`` choices: injected into the presets, put in
place of a hard-coded Flax BatchNorm (linen and NNX), weight standardization, and the
one-line errors at start."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx
from trainer import QUICK, ROOT, cli, compose, tables, train

from bnlab import config
from bnlab.models import build_network
from bnlab.norm.variants import standardize_weights

TESTS = ROOT / "tests"
X = jax.random.normal(jax.random.key(1), (16, 8, 8, 1)) * 2 + 1


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _norm(*over: str):
    return config.typed(compose([*QUICK, *over])).norm


def _mlp_reference(p, x, norm):
    """FlaxBNMLP (tests/own_models.py) written out with ``norm(h, its params)``."""
    h = x.reshape((x.shape[0], -1))
    for i in (0, 1):
        h = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
        h = nn.relu(norm(h, p[f"BatchNorm_{i}"]))
    return h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]


@pytest.mark.parametrize(("choice", "flax_norm"), [
    (["norm=layer_norm"], nn.LayerNorm()),
    (["norm=rms_norm"], nn.RMSNorm()),
    (["norm=group_norm", "norm.groups=2"], nn.GroupNorm(num_groups=2)),
])  # fmt: skip
def test_hard_coded_linen_batchnorm_becomes_the_choice(choice, flax_norm):
    """``FlaxBNMLP`` hard-codes ``nn.BatchNorm``; under ``norm=<choice>`` it computes what
    the model with Flax's own LayerNorm/RMSNorm/GroupNorm there computes (outputs and
    gradients), keeps no batch statistics, and records the same sites."""
    net = build_network({"_target_": "own_models.FlaxBNMLP"}, _norm(*choice), 10)
    net.discover(jax.ShapeDtypeStruct(X.shape, X.dtype))
    params, bs = net.init(jax.random.key(0), X)
    assert bs == {} and "scale" in params["BatchNorm_0"]
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)

    def ref(p):
        return _mlp_reference(p, X, lambda h, q: flax_norm.apply({"params": q}, h))

    got, _, sites = net.apply(params, bs, X, train=True, capture=True)
    np.testing.assert_allclose(got, ref(params), rtol=1e-5, atol=1e-5)
    assert {"BatchNorm_0/in", "BatchNorm_0/out", "Dense_1/in"} <= set(sites)
    g1 = jax.grad(lambda p: net.apply(p, bs, X, train=True)[0].sum())(params)
    g2 = jax.grad(lambda p: ref(p).sum())(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def test_hard_coded_nnx_batchnorm_becomes_group_norm():

    x = jax.random.normal(jax.random.key(1), (16, 64)) * 2 + 1
    net = build_network({"_target_": "own_models.NNXFlaxBN", "din": 64},
                        _norm("norm=group_norm", "norm.groups=4"), 10)  # fmt: skip
    params, bs = net.init(jax.random.key(0), x)
    assert bs == {}
    got, _, _ = net.apply(params, bs, x, train=True)
    gn = nnx.GroupNorm(16, num_groups=4, rngs=nnx.Rngs(0))
    lin = params["layers"]["0"]
    h = gn(x @ lin["kernel"] + lin["bias"])
    want = nnx.relu(h) @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_renorm_in_place_of_flax_bn_at_rmax1_dmax0_is_bn():
    """Substituted for a hard-coded ``nn.BatchNorm`` (its momentum 0.9 kept), Batch Renorm
    with r_max=1, d_max=0 gives BN's outputs and running statistics, plus its counter."""
    model = {"_target_": "own_models.FlaxBNMLP"}
    rn = build_network(model, _norm("norm=batch_renorm", "norm.r_max=1", "norm.d_max=0"), 10)
    bn = build_network(model, _norm("norm=bn"), 10)
    params, bs = bn.init(jax.random.key(0), X)
    _, bs_rn = rn.init(jax.random.key(0), X)
    assert float(bs_rn["BatchNorm_0"]["steps"]) == 0
    y1, s1, _ = rn.apply(params, {k: {**v, "steps": 0.0} for k, v in bs.items()}, X, train=True)
    y2, s2, _ = bn.apply(params, bs, X, train=True)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(s1["BatchNorm_1"][k], s2["BatchNorm_1"][k], rtol=1e-6)
    assert float(s1["BatchNorm_1"]["steps"]) == 1


def test_weight_standardization_standardizes_every_conv_kernel():
    model = dict(config.typed(compose([*QUICK, "model=cnn", "data.flatten=false"])).model)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    ws = build_network(model, _norm("norm=ws_group_norm"), 10)
    gn = build_network(model, _norm("norm=group_norm"), 10)
    for net in (ws, gn):
        net.discover(jax.ShapeDtypeStruct(x.shape, x.dtype))
    params, bs = gn.init(jax.random.key(0), x)
    ws.weight_std = True
    got = ws.apply(params, bs, x, train=True)[0]
    np.testing.assert_allclose(got, gn.apply(standardize_weights(params), bs, x, train=True)[0],
                               rtol=1e-6)  # fmt: skip
    assert not np.allclose(got, gn.apply(params, bs, x, train=True)[0], atol=1e-3)


def test_batch_renorm_trains_with_every_probe(tmp_path):
    """A run under norm=batch_renorm: sites, layer statistics (gamma/beta, running
    statistics) and gradient-ICS, as BN's."""
    train([*QUICK, "norm=batch_renorm", "norm.renorm_warmup=20", "norm.r_max_steps=60",
           "norm.d_max_steps=40", "steps=100", "probe.ics_every=50"], tmp_path)  # fmt: skip
    t = tables(tmp_path)
    assert set(t["activations.parquet"]["site"]) == {"prenorm", "pre", "post"}
    assert {"gamma_mean", "running_var_mean"} <= set(t["layers.parquet"]["stat"])
    assert len(t["ics.parquet"]) > 0


@pytest.mark.parametrize(("over", "says"), [
    (["norm=group_norm"], "bnlab: error: norm.groups=8 does not divide the 100 channels of "
                          "layer1/norm: choose norm.groups dividing every normalized layer's width"),
    (["norm=layer_norm", "norm.ghost_batch_size=10"],
     "bnlab: error: norm.ghost_batch_size applies to BN only (norm.kind=batch), not to "
     "norm.kind=layer: drop it or choose norm=bn"),
])  # fmt: skip
def test_a_normalizer_that_cannot_fit_is_one_line_at_start(tmp_path, over, says):
    res = cli([*QUICK, *over, f"hydra.run.dir={tmp_path / 'run'}"])
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == says and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
