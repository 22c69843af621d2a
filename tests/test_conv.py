"""Conv nets: the VGG and ResNet presets, activations, sampled conv probes, and the
host-dispatched step loop against the scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from trainer import COMPILE_CACHE, QUICK, compose, tables, train

from bnlab import config
from bnlab.measure import activation_stats, sample_positions
from bnlab.models import ACTIVATIONS, MONOTONE, activation_sources, build_network
from bnlab.models.activations import resolve

QS = [0, 15, 50, 85, 100]


@pytest.fixture(scope="module", autouse=True)
def _compile_cache():
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _norm(name: str):
    return config.typed(compose([*QUICK, f"norm={name}"])).norm


PRESETS = {
    "vgg": {"_target_": "bnlab.models.VGG", "stages": [[4], [8, 8]], "features": [8],
            "activation": "gelu", "use_bias": True},
    "resnet": {"_target_": "bnlab.models.ResNet", "depth": 8, "width": 4, "shortcut": "projection",
               "activation": {"_target_": "jax.nn.leaky_relu", "negative_slope": 0.1},
               "use_bias": False},
}  # fmt: skip
SITES = {
    "vgg": ["stage1/norm1", "stage2/conv2", "stage2/norm2", "dense1", "dense1_norm", "head"],
    "resnet": ["norm0", "stage1/block1/norm2", "stage2/block1/proj", "stage2/block1/proj_norm",
               "stage3/block1/conv2", "head"],
}  # fmt: skip


@pytest.mark.parametrize("image", [(28, 28, 1), (32, 32, 3)], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("preset", ["vgg", "resnet"])
@pytest.mark.parametrize("norm", ["bn", "none"])
def test_presets_run_on_fashion_mnist_and_cifar_shapes(preset, image, norm):
    """Both presets on 28x28 grey and 32x32 colour images: logits, per-feature-map BN
    (output mean 0 per channel in train mode), sites by module path (``in`` only where
    the norm normalizes)."""
    x = jax.random.normal(jax.random.key(0), (6, *image)) * 3 + 1
    net = build_network(PRESETS[preset], _norm(norm), 10)
    layout = net.discover(jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert layout.convs and not layout.sown and not layout.flax_bn
    params, bs = net.init(jax.random.key(0), x)
    logits, new_bs, sites = jax.jit(lambda p, b: net.apply(p, b, x, train=True, capture=True))(
        params, bs)  # fmt: skip
    assert logits.shape == (6, 10) and np.all(np.isfinite(logits))
    assert set(sites) == set(layout.sites)
    for name in SITES[preset]:
        kind = "norm" in name
        assert (f"{name}/in" in sites) == (not kind or norm == "bn"), name
        assert (f"{name}/out" in sites) == kind, name
    if norm == "bn":
        out = np.asarray(sites[f"{SITES[preset][0]}/out"], np.float64)
        np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-4)
        assert jax.tree.structure(new_bs) == jax.tree.structure(bs) and bs
    else:
        assert bs == {} and all("norm" not in k for k in params)


def test_activations_by_name_and_target():
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_allclose(resolve("gelu")(x), jax.nn.gelu(x, approximate=False))
    np.testing.assert_allclose(resolve("silu")(x), x * jax.nn.sigmoid(x), rtol=1e-6)
    leaky = resolve({"_target_": "jax.nn.leaky_relu", "negative_slope": 0.5})
    np.testing.assert_allclose(leaky(x), np.where(x > 0, x, 0.5 * x))
    assert set(ACTIVATIONS) == {"relu", "gelu", "silu", "tanh", "sigmoid", "linear"}
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        resolve("swish")
    # the percentile shortcut only where proven safe
    names = ["layer1/pre", "layer1/post"]
    assert activation_sources(names, "relu", "before") == {"layer1/post": "layer1/pre"}
    for act in ("gelu", "silu", "tanh", leaky):
        assert activation_sources(names, act, "before") == {}
    assert MONOTONE == {"sigmoid", "relu", "linear"}


def test_conv_site_percentiles_over_a_fixed_sample():
    """A conv site with more positions than ``sample``: means and stds over every value,
    percentiles (pooled and per feature map) exactly NumPy's over the values at the
    sampled positions, the same positions for every site of that shape."""
    rng = np.random.default_rng(0)
    h = rng.standard_t(3, size=(40, 12, 12, 6)).astype(np.float32)  # 5,760 positions
    post = np.maximum(h, 0)
    sites = {"a/pre": jnp.asarray(h), "a/post": jnp.asarray(post)}
    got = jax.device_get(activation_stats(sites, QS, [2], {"a/post": "a/pre"}, sample=500))
    idx = sample_positions(h.shape, 500)
    assert idx is not None and len(idx) == 500 and len(set(idx)) == 500
    np.testing.assert_array_equal(idx, sample_positions((40, 12, 12, 9), 500))
    for name, v in (("a/pre", h), ("a/post", post)):
        flat = v.reshape(-1, 6).astype(np.float64)
        np.testing.assert_allclose(got[name]["mean"], flat.mean(), rtol=1e-5)
        np.testing.assert_allclose(got[name]["std"], flat.std(), rtol=1e-5)
        np.testing.assert_allclose(got[name]["u2/std"], flat[:, 2].std(), rtol=1e-5)
        for q in QS:
            np.testing.assert_allclose(got[name][f"p{q}"], np.percentile(flat[idx], q), rtol=1e-6)
            np.testing.assert_allclose(got[name][f"u2/p{q}"], np.percentile(flat[idx, 2], q),
                                       rtol=1e-6)  # fmt: skip
    assert not np.isclose(got["a/pre"]["p50"], np.percentile(h, 50), rtol=1e-6)  # a sample
    assert sample_positions((100, 64), 10) is None and sample_positions((5, 4, 4, 2), 80) is None


def test_host_loop_equals_scan(tmp_path, record_property):
    """The same run with its steps in a ``lax.scan`` and dispatched from the host
    (``step_loop=host``, what conv nets get on a CPU; the loop does not depend on the
    model, so a small MLP shows it): every table equal (float32 rounding), noisy BN,
    gradient-ICS, probes on the second device and a chunk crossing epochs included."""
    over = [*QUICK, "model.features=[8,8]", "steps=80", "chunk_steps=40", "probe.every=20",
            "eval_every=40", "checkpoint_every=40", "batch_size=500", "data.probe_size=40",
            "norm=bn_noisy", "probe.ics_every=20"]  # fmt: skip
    for loop in ("scan", "host"):
        (s,) = train([*over, f"step_loop={loop}"], tmp_path / loop)
        assert s["status"] == "finished"
    a, b = tables(tmp_path / "scan"), tables(tmp_path / "host")
    worst = 0.0
    for t in a:
        keys = [c for c in a[t].columns if c != "value"]
        pd.testing.assert_frame_equal(a[t][keys], b[t][keys])
        np.testing.assert_allclose(b[t]["value"], a[t]["value"], rtol=1e-5, atol=1e-5, err_msg=t)
        diff = np.abs(a[t]["value"] - b[t]["value"]).to_numpy()
        worst = max(worst, float(np.nanmax(diff, initial=0)))
    assert len(a["ics.parquet"]) and len(a["activations.parquet"])
    record_property("summary", f"host loop vs scan (80 steps): max abs diff {worst:.1e}")
