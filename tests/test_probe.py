"""Probe statistics: exact sort-free percentiles, and the loop's probes vs NumPy."""

from types import SimpleNamespace as NS

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab import data, loop
from bnlab.models import flatten_sites
from bnlab.probe import activation_stats, order_statistics, percentiles

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


def test_activation_stats_tracks_units():
    h = np.random.default_rng(4).normal(size=(64, 8, 8, 5)).astype(np.float32)
    s = jax.device_get(activation_stats({"a/b": jnp.asarray(h)}, [15, 50, 85], [0, 3, 9]))["a/b"]
    assert "u9/mean" not in s  # a unit beyond the width is skipped
    np.testing.assert_allclose(s["mean"], h.mean(), rtol=1e-5)
    np.testing.assert_allclose(s["std"], h.std(), rtol=1e-5)
    np.testing.assert_allclose(s["u3/p85"], np.percentile(h[..., 3], 85), rtol=1e-6)
    np.testing.assert_allclose(s["u0/std"], h[..., 0].std(), rtol=1e-5)


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
def test_loop_probes_equal_numpy(bn_mode):
    """The trainer's probe equals NumPy statistics of the same model's activations."""
    ds = data.load("digits", probe_size=200)
    model_cfg = NS(
        name="mlp", features=[32, 16], channels=[], activation="tanh",
        norm_position="before", init_std=None, use_bias=True,
    )  # fmt: skip
    norm_cfg = NS(
        name="bn", use_scale=True, use_bias=True, stats_grad=True,
        momentum=0.9, epsilon=1e-5, ghost_batch_size=None,
    )  # fmt: skip
    opt_cfg = NS(
        name="sgd", lr=0.1, momentum=0.0, nesterov=False, b1=0.9, b2=0.999,
        weight_decay=0.0, schedule="constant", warmup_steps=0, decay_factor=0.1, boundaries=[],
    )  # fmt: skip
    probe_cfg = NS(every=10, percentiles=[15, 50, 85], units=[1], bn_mode=bn_mode)
    model = loop.make_model(model_cfg, norm_cfg, ds.num_classes)
    tx, sched = loop.make_optimizer(opt_cfg, 20)
    tr = loop.Trainer(model, tx, sched, ds, batch_size=50, chunk_steps=20, probe_cfg=probe_cfg)
    state, out = tr.chunk(loop.init_state(model, tx, tr.data["train_x"][:2], 0), 20)
    acts, layers = jax.device_get(tr.measure(state))

    _, v = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        ds.probe_x, train=bn_mode == "batch", mutable=["sites", "batch_stats"],
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
        out["acts"]["layer2/pre"]["p50"][-1], acts["layer2/pre"]["p50"], rtol=1e-6
    )
    kernel = np.asarray(state.params["layer1"]["linear"]["kernel"])
    np.testing.assert_allclose(layers["layer1"]["weight_norm"], np.linalg.norm(kernel), rtol=1e-5)
    gamma = np.asarray(state.params["layer2"]["norm"]["scale"])
    np.testing.assert_allclose(layers["layer2"]["gamma_std"], gamma.std(), rtol=1e-4, atol=1e-7)
    assert out["layers"]["layer1"]["grad_norm"][-1] > 0
