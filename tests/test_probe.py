"""Probe statistics: exact sort-free percentiles, and the loop's probes vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer import QUICK, engine_for

from bnlab.engine.step import unstack
from bnlab.measure import activation_stats, order_statistics, percentiles, percentiles_through
from bnlab.models import ACTIVATIONS, MONOTONE, activation_sources, flatten_sites

QS = [0, 1, 15, 50, 85, 99, 100]


@pytest.mark.parametrize(
    "x",
    [
        np.random.default_rng(0).normal(size=(1000, 100)),
        1 / (1 + np.exp(-20 * np.random.default_rng(1).normal(size=(300, 7)))),  # saturated
        np.random.default_rng(2).integers(-3, 3, size=(37, 11)).astype(float),  # many ties
        np.array([0.0, -0.0, 5.0, -5.0, 1e30, -1e-30, 3.0]),
        np.array([2.5]),
    ],
    ids=["normal", "sigmoid", "ties", "signs", "single"],
)
def test_percentiles_equal_numpy(x):
    x = x.astype(np.float32)
    got = np.asarray(jax.jit(lambda v: percentiles(v, QS))(x))
    want = np.percentile(x.astype(np.float64), QS)
    # order statistics are exact (test below); the interpolation weight is rounded to
    # float32, so agreement is to a few float32 ulps
    np.testing.assert_allclose(got, want, rtol=5e-7, atol=1e-30)


def test_order_statistics_exact():
    x = np.random.default_rng(3).standard_t(2, size=5000).astype(np.float32)
    ranks = np.array([0, 1, 749, 2500, 4998, 4999])
    got = np.asarray(order_statistics(jnp.asarray(x), ranks))
    np.testing.assert_array_equal(got, np.sort(x)[ranks])


def test_order_statistics_exact_with_ties_and_shared_bins():
    """Many targets in one 16-bit bin and on one value (integers, signed zeros, a run of
    ReLU zeros), every rank of a grid: equal to NumPy's sorted values."""
    rng = np.random.default_rng(5)
    x = np.concatenate([np.round(rng.normal(0, 2, 30_000)), np.zeros(20_000), -np.zeros(5_000),
                        rng.normal(1, 1e-4, 5_000)]).astype(np.float32)  # fmt: skip
    rng.shuffle(x)
    ranks = np.unique(np.r_[0, 1, np.linspace(0, x.size - 1, 40).astype(int), x.size - 1])
    got = np.asarray(jax.jit(order_statistics)(jnp.asarray(x), jnp.asarray(ranks)))
    np.testing.assert_array_equal(got, np.sort(x)[ranks])


@pytest.mark.parametrize("act", sorted(MONOTONE))
@pytest.mark.parametrize("n", [1, 500, 100_000])  # sorted and radix-selected sizes
def test_percentiles_through_a_monotone_activation(act, n):
    """Percentiles of act(x) read through x's order statistics equal NumPy's of act(x)
    (relu: ties at 0 in the output from distinct inputs)."""
    x = np.random.default_rng(n).normal(0, 3, size=n).astype(np.float32)
    y = jax.jit(ACTIVATIONS[act])(x)
    got = np.asarray(jax.jit(lambda a, b: percentiles_through(a, b, QS))(x, y))
    want = np.percentile(np.asarray(y, np.float64), QS)
    np.testing.assert_allclose(got, want, rtol=5e-7, atol=1e-30)


@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh", "gelu", "silu"])
def test_monotone_activations_are_monotone_in_float32(act):
    """What reading ``post`` through ``pre`` relies on: XLA's float32 activation never
    decreases. Checked on 4.4 million consecutive float32s around 11 points from -30
    to 30, plus a grid; tanh is the counterexample kept out of ``MONOTONE`` (gelu and silu
    dip below zero before they rise)."""
    start = np.array([-30, -17, -8, -3, -1, 0, 1, 3, 8, 17, 30], np.float32).view(np.int32)
    bits = (start[:, None] + np.arange(-200_000, 200_000)[None, :]).astype(np.int32)
    x = np.concatenate([bits.view(np.float32).ravel(), np.linspace(-90, 90, 10**6)])
    x = np.sort(x[np.isfinite(x)].astype(np.float32))
    y = np.asarray(jax.jit(ACTIVATIONS[act])(x))
    assert np.all(np.diff(y) >= 0) == (act in MONOTONE)


def test_activation_sources():
    before = ["layer1/prenorm", "layer1/pre", "layer1/post", "layer2/pre", "layer2/post"]
    assert activation_sources(before, "tanh", "before") == {}
    assert activation_sources(before, "sigmoid", "before") == {
        "layer1/post": "layer1/pre", "layer2/post": "layer2/pre",
    }  # fmt: skip
    after = ["layer1/pre", "layer1/prenorm", "layer1/post"]
    assert activation_sources(after, "relu", "after") == {"layer1/prenorm": "layer1/pre"}
    assert activation_sources(["layer1/pre", "layer1/post"], "relu", "after") == {
        "layer1/post": "layer1/pre"
    }


def test_activation_stats_tracks_units():
    """Units of a conv site (a feature map over batch and space: radix-selected) and of
    dense sites (sorted together), against NumPy."""
    rng = np.random.default_rng(4)
    sites = {
        "conv/pre": rng.normal(size=(80, 8, 8, 5)).astype(np.float32),  # 5,120 per unit
        "a/pre": rng.normal(size=(50, 4)).astype(np.float32),
        "b/pre": rng.standard_t(3, size=(50, 6)).astype(np.float32),
    }
    got = jax.device_get(
        activation_stats({k: jnp.asarray(v) for k, v in sites.items()}, QS, [0, 3, 4])
    )
    assert "u4/mean" not in got["a/pre"] and "u4/mean" in got["b/pre"]  # beyond the width
    for name, h in sites.items():
        np.testing.assert_allclose(got[name]["mean"], h.mean(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got[name]["std"], h.std(), rtol=1e-5)
        for j in [0, 3, 4][: 3 if h.shape[-1] > 4 else 2]:
            u = h[..., j].astype(np.float64)
            np.testing.assert_allclose(got[name][f"u{j}/std"], u.std(), rtol=1e-5)
            for q in QS:
                np.testing.assert_allclose(
                    got[name][f"u{j}/p{q:g}"], np.percentile(u, q), rtol=5e-7, atol=1e-30
                )


@pytest.mark.parametrize("bn_mode, act", [("batch", "sigmoid"), ("eval", "tanh")])
def test_loop_probes_equal_numpy(bn_mode, act):
    """The trainer's probe equals NumPy statistics of the same model's activations
    (sigmoid: ``post`` read through ``pre``; tanh: searched on its own)."""
    over = [
        *QUICK, "data.probe_size=200", "model.features=[32,16]", f"model.activation={act}",
        "model.init_std=null", "norm.momentum=0.9", "optimizer.lr=0.1", "steps=20",
        "batch_size=50", "chunk_steps=20", "probe.every=10", "probe.units=[1]",
        f"probe.bn_mode={bn_mode}",
    ]  # fmt: skip
    tr, states, _ = engine_for(over)
    states, out = tr.chunk(states, 0, 20)
    measured = jax.device_get(tr.measure(states))
    acts = jax.tree.map(lambda a: a[0, 0], measured.acts)
    layers = jax.tree.map(lambda a: a[0, 0], measured.layers)
    out = jax.device_get(out)
    state, model, ds = unstack(jax.device_get(states), 0), tr.learner.net.module, tr.data

    _, v = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        ds["probe_x"], train=bn_mode == "batch", mutable=["sites", "batch_stats"],
    )  # fmt: skip
    sites = {k: np.asarray(a, np.float64) for k, a in flatten_sites(v["sites"]).items()}
    assert (
        set(acts)
        == set(sites)
        == {f"layer{i}/{s}" for i in (1, 2) for s in ("prenorm", "pre", "post")}
    )
    for name, h in sites.items():
        np.testing.assert_allclose(acts[name]["mean"], h.mean(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(acts[name]["std"], h.std(), rtol=1e-4)
        for q in (15, 50, 85):
            np.testing.assert_allclose(
                acts[name][f"p{q}"], np.percentile(h, q), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                acts[name][f"u1/p{q}"], np.percentile(h[:, 1], q), rtol=1e-5, atol=1e-6
            )
    # the chunk's last probe saw the same state as this separate probe
    np.testing.assert_allclose(
        out.acts["layer2/pre"]["p50"][0, -1], acts["layer2/pre"]["p50"], rtol=1e-6
    )
    kernel = np.asarray(state.params["layer1"]["linear"]["kernel"])
    np.testing.assert_allclose(layers["layer1"]["weight_norm"], np.linalg.norm(kernel), rtol=1e-5)
    gamma = np.asarray(state.params["layer2"]["norm"]["scale"])
    np.testing.assert_allclose(layers["layer2"]["gamma_std"], gamma.std(), rtol=1e-4, atol=1e-7)
    assert out.layers["layer1"]["grad_norm"][0, -1] > 0
    # plain SGD: the update is lr * gradient, so ||dW|| / ||W|| = lr ||g|| / ||W||
    last = {k: out.layers["layer1"][k][0, -1] for k in ("update_ratio", "weight_norm", "grad_norm")}
    np.testing.assert_allclose(
        last["update_ratio"] * last["weight_norm"], 0.1 * last["grad_norm"], rtol=1e-5
    )
    assert layers["layer1"]["update_ratio"] == 0  # no step taken


def test_update_ratio_by_hand():
    """``update_ratio`` is ||update|| / ||weight|| of the given update, per layer (the
    built-ins' layout) and per leaf by path (any model); NaN for a zero weight."""
    from bnlab.measure import layer_stats, module_stats

    w = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # ||w|| = 5
    g = jnp.array([[1.0, 2.0], [2.0, 4.0]])  # ||g|| = 5
    u = -0.2 * g  # plain SGD at lr 0.2: ||u|| = 1
    params = {"layer1": {"linear": {"kernel": w}}}
    grads, updates = {"layer1": {"linear": {"kernel": g}}}, {"layer1": {"linear": {"kernel": u}}}
    got = layer_stats(params, grads, {}, ["layer1"], updates)["layer1"]
    np.testing.assert_allclose(got["update_ratio"], 0.2, rtol=1e-6)
    own = {"dense": {"kernel": w}, "lin": {"w": w, "b": jnp.zeros(2)}}
    own_g = {"dense": {"kernel": g}, "lin": {"w": g, "b": jnp.ones(2)}}
    own_u = {"dense": {"kernel": u}, "lin": {"w": 2 * u, "b": -0.2 * jnp.ones(2)}}
    got = module_stats(own, own_g, {}, own_u)
    np.testing.assert_allclose(got["dense"]["update_ratio"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(got["lin/w"]["update_ratio"], 0.4, rtol=1e-6)
    assert np.isnan(got["lin/b"]["update_ratio"])
    assert "update_ratio" not in module_stats(own, own_g, {})["dense"]
