"""Tests of the models (:mod:`bnlab.models`): named activation sites, shapes, BN wiring."""

from __future__ import annotations

from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab.models import CNN, MLP, SITES, flatten_sites, layer_names
from bnlab.norm import BatchNorm, NoNorm

BATCH = 16


def _expected_shapes(kind: str, image: tuple[int, int, int]) -> dict[int, tuple[int, ...]]:
    """Shape of every site of hidden layer i (all sites of a layer share it)."""
    if kind == "mlp":  # default widths (100, 100, 100)
        return {i: (BATCH, 100) for i in (1, 2, 3)}
    h, w, _ = image  # CNN defaults: convs (32, 64) each followed by a 2x2 pool, then dense 128
    return {
        1: (BATCH, h, w, 32),
        2: (BATCH, -(-h // 2), -(-w // 2), 64),
        3: (BATCH, 128),
    }


MODEL_CASES = [("mlp", (28, 28, 1)), ("cnn", (28, 28, 1)), ("cnn", (32, 32, 3))]
NORMS = {"nonorm": NoNorm, "bn": BatchNorm}


def _model(kind, norm, position, **kw):
    cls = MLP if kind == "mlp" else CNN
    return cls(norm=NORMS[norm], norm_position=position, **kw)


def _init(model, x):
    variables = model.init(jax.random.key(0), x, train=True)
    return {k: v for k, v in variables.items() if k != "sites"}  # sites are outputs, not state


@cache
def _variables(kind, image, norm):
    """Initialized variables, shared by tests (init dominates their run time); the norm's
    position does not change the variables' shapes, so one init serves both."""
    return _init(_model(kind, norm, "before"), jnp.zeros((BATCH, *image)))


def _images(image, seed, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(loc + scale * rng.standard_normal((BATCH, *image)), jnp.float32)


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize(
    "kind,image", MODEL_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_forward_returns_every_named_site(kind, image, norm, position):
    x = _images(image, 1)
    model = _model(kind, norm, position)
    variables = _variables(kind, image, norm)
    assert ("batch_stats" in variables) == (norm == "bn")
    assert layer_names(variables["params"]) == ["layer1", "layer2", "layer3"]

    mutable = ["sites", "batch_stats"] if norm == "bn" else ["sites"]
    logits, state = model.apply(variables, x, train=True, mutable=mutable)
    assert logits.shape == (BATCH, 10)
    sites = flatten_sites(state["sites"])
    site_names = ("prenorm", "pre", "post") if norm == "bn" else ("pre", "post")
    shapes = _expected_shapes(kind, image)
    assert set(sites) == {f"layer{i}/{s}" for i in shapes for s in site_names}
    assert set(site_names) <= set(SITES)
    for name, value in sites.items():
        i = int(name.split("/")[0][len("layer") :])
        assert value.shape == shapes[i], name
        assert np.all(np.isfinite(value)), name

    # eval mode: the same sites, no batch_stats mutation needed
    logits_eval, state_eval = model.apply(variables, x, train=False, mutable=["sites"])
    assert logits_eval.shape == (BATCH, 10)
    assert set(flatten_sites(state_eval["sites"])) == set(sites)
    # without 'sites' mutable the model runs unchanged and returns no sites
    if norm == "bn":
        logits2, state2 = model.apply(variables, x, train=True, mutable=["batch_stats"])
        assert set(state2) == {"batch_stats"}
    else:
        logits2 = model.apply(variables, x, train=True)
    np.testing.assert_array_equal(logits2, logits)


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize(
    "kind,image", MODEL_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_bn_site_is_normalized_at_init_in_train_mode(kind, image, position):
    """The BN output (``pre`` when BN comes first, ``post`` when after) has per-feature
    batch mean 0 and std 1 at init (gamma = 1, beta = 0); ``prenorm`` is its input."""
    x = _images(image, 2, loc=0.5, scale=2.0)
    model = _model(kind, "bn", position)
    variables = _variables(kind, image, "bn")
    _, state = model.apply(variables, x, train=True, mutable=["sites", "batch_stats"])
    sites = flatten_sites(state["sites"])
    out_site = "pre" if position == "before" else "post"
    for i in (1, 2, 3):
        h = np.asarray(sites[f"layer{i}/{out_site}"], np.float64)
        red = tuple(range(h.ndim - 1))  # per feature (map): over batch and space
        pre_norm = np.asarray(sites[f"layer{i}/prenorm"], np.float64)
        mean, var = pre_norm.mean(red), pre_norm.var(red)
        np.testing.assert_allclose(h.mean(red), 0.0, atol=1e-4)
        # std is sqrt(var / (var + eps)): 1 unless a feature barely varies (e.g. a
        # mostly-dead relu feeding BN when it comes after the activation)
        np.testing.assert_allclose(h.std(red), np.sqrt(var / (var + 1e-5)), rtol=1e-4)
        if position == "before":
            np.testing.assert_allclose(h.std(red), 1.0, atol=1e-3)
        np.testing.assert_allclose(h, (pre_norm - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    # running stats moved from their init toward the batch statistics of ``prenorm``
    bs = state["batch_stats"]["layer1"]["norm"]
    pre1 = np.asarray(sites["layer1/prenorm"], np.float64)
    red = tuple(range(pre1.ndim - 1))
    np.testing.assert_allclose(bs["mean"], 0.01 * pre1.mean(red), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bs["var"], 0.99 + 0.01 * pre1.var(red), rtol=1e-5)


@pytest.mark.parametrize(
    "kind,image",
    MODEL_CASES[:2],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v,
)
def test_without_bn_pre_is_the_linear_output(kind, image):
    """With NoNorm, ``pre`` is the linear map's output and ``post`` = activation(pre)."""
    x = _images(image, 3)
    model = _model(kind, "nonorm", "before")
    variables = _variables(kind, image, "nonorm")
    _, state = model.apply(variables, x, train=True, mutable=["sites"])
    sites = flatten_sites(state["sites"])
    act = jax.nn.sigmoid if kind == "mlp" else jax.nn.relu  # the models' default activations
    for i in (1, 2, 3):
        np.testing.assert_allclose(sites[f"layer{i}/post"], act(sites[f"layer{i}/pre"]), atol=1e-6)
    flat = x.reshape(BATCH, -1) if kind == "mlp" else x
    p = variables["params"]["layer1"]["linear"]
    if kind == "mlp":
        expected = flat @ p["kernel"] + p["bias"]
    else:
        expected = (
            jax.lax.conv_general_dilated(
                flat, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            + p["bias"]
        )
    np.testing.assert_allclose(sites["layer1/pre"], expected, rtol=1e-4, atol=1e-4)


def test_bn_running_stats_are_used_in_eval_mode():
    x = _images((28, 28, 1), 4)
    model = MLP(norm=BatchNorm)
    variables = _variables("mlp", (28, 28, 1), "bn")
    logits_a = model.apply(variables, x, train=False)
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    trained = {**variables, **state}
    assert not np.allclose(
        trained["batch_stats"]["layer1"]["norm"]["mean"],
        variables["batch_stats"]["layer1"]["norm"]["mean"],
    )
    logits_b = model.apply(trained, x, train=False)
    assert not np.allclose(logits_a, logits_b)  # eval output follows the running stats
    # a batch of one is fine in eval mode; in train mode BN returns its bias there, as
    # flax's (the trainer refuses that setup at start, not the layer)
    assert np.all(np.isfinite(model.apply(trained, x[:1], train=False)))
    _, state = model.apply(trained, x[:1], train=True, mutable=["batch_stats", "sites"])
    np.testing.assert_array_equal(
        flatten_sites(state["sites"])["layer1/pre"][0], trained["params"]["layer1"]["norm"]["bias"]
    )


def test_norm_can_be_configured_with_partial():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((8, 8, 8, 3)), jnp.float32)
    model = CNN(
        channels=(4,), features=(6,), norm=partial(BatchNorm, momentum=0.5, ghost_batch_size=4)
    )
    variables = _init(model, x)
    _, state = model.apply(variables, x, train=True, mutable=["sites", "batch_stats"])
    sites = flatten_sites(state["sites"])
    assert set(sites) == {f"layer{i}/{s}" for i in (1, 2) for s in ("prenorm", "pre", "post")}
    assert sites["layer1/pre"].shape == (8, 8, 8, 4) and sites["layer2/pre"].shape == (8, 6)
    # momentum 0.5: the running mean is half the mean of the ghost batch means
    pre = np.asarray(sites["layer1/prenorm"], np.float64)
    np.testing.assert_allclose(
        state["batch_stats"]["layer1"]["norm"]["mean"],
        0.5 * pre.mean((0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )


def test_layer_names_sort_numerically():
    model = MLP(features=(3,) * 11)
    variables = _init(model, jnp.ones((2, 5)))
    assert layer_names(variables["params"]) == [f"layer{i}" for i in range(1, 12)]


def test_flatten_sites_takes_the_last_sown_value():
    sites = {"layer1": {"pre": (jnp.zeros(2), jnp.ones(2))}, "layer2": {"post": (jnp.ones(3),)}}
    flat = flatten_sites(sites)
    assert set(flat) == {"layer1/pre", "layer2/post"}
    np.testing.assert_array_equal(flat["layer1/pre"], jnp.ones(2))


def test_bad_configuration_is_a_clear_error():
    x = jnp.ones((2, 8, 8, 1))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(activation="swish").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="norm_position"):
        MLP(norm_position="middle").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="NHWC"):
        CNN().init(jax.random.key(0), jnp.ones((2, 64)))


@pytest.mark.parametrize(("init_std", "variance"), [(None, 1.0), ("he", 2.0), (0.1, None)])
def test_init_std_draws_lecun_he_or_a_fixed_gaussian(init_std, variance):
    """``init_std``: None is LeCun normal (variance 1/fan-in), ``"he"`` He normal (2/fan-in,
    for ReLU nets), a number a fixed N(0, std^2), in every layer (the ReLU MLP of the atlas)."""
    params = _init(MLP(features=(400, 400), init_std=init_std), jnp.ones((2, 784)))["params"]
    for path, k in jax.tree_util.tree_leaves_with_path(params):
        if k.ndim != 2:
            continue
        want = 0.01 if variance is None else variance / k.shape[0]
        assert float(jnp.var(k)) == pytest.approx(want, rel=0.05), jax.tree_util.keystr(path)
