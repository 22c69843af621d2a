"""The normalizers beside BN against Flax's own (outputs, gradients) and Batch Renorm
against the paper's equations (Ioffe 2017, Algorithm 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from bnlab.norm import BatchNorm, variants_linen, variants_nnx
from bnlab.norm.variants import NormFitError, renorm_limits, standardize_weights

X2 = jax.random.normal(jax.random.key(0), (8, 12)) * 3 + 1
X4 = jax.random.normal(jax.random.key(1), (4, 5, 5, 8)) * 2 - 0.5
ALL4 = (1, 2, 3)


def _grads(module, x, variables):
    """Output, and the gradients w.r.t. input and params of a fixed random readout."""
    w = jax.random.normal(jax.random.key(9), x.shape)

    def loss(params, x):
        y = module.apply({**variables, "params": params}, x)
        return jnp.sum(y * w), y

    (_, y), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)
    return y, g


def _perturbed(variables):
    """Non-trivial scale/bias so the gradients w.r.t. them are tested too."""
    keys = iter(jax.random.split(jax.random.key(3), 8))
    return jax.tree.map(lambda a: a + 0.3 * jax.random.normal(next(keys), a.shape), variables)


LINEN = [
    ("layer", X2, dict(), dict()),
    ("layer", X4, dict(), dict(reduction_axes=ALL4, feature_axes=-1)),
    ("layer", X4, dict(reduction_axes=-1), dict()),
    ("rms", X2, dict(), dict()),
    ("rms", X4, dict(), dict(reduction_axes=ALL4, feature_axes=-1)),
    ("group", X4, dict(groups=4), dict(num_groups=4)),
    ("group", X2, dict(groups=3), dict(num_groups=3)),
]
FLAX_LINEN = {"layer": nn.LayerNorm, "rms": nn.RMSNorm, "group": nn.GroupNorm}


@pytest.mark.parametrize(("kind", "x", "ours_kw", "flax_kw"), LINEN)
def test_linen_variant_equals_flax(kind, x, ours_kw, flax_kw):
    ours = variants_linen.VARIANTS[kind](**ours_kw)
    theirs = FLAX_LINEN[kind](**flax_kw)
    v = _perturbed(theirs.init(jax.random.key(2), x))
    assert jax.tree.structure(ours.init(jax.random.key(2), x)) == jax.tree.structure(v)
    y1, g1 = _grads(ours, x, v)
    y2, g2 = _grads(theirs, x, v)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g1, g2)


FLAX_NNX = {"layer": nnx.LayerNorm, "rms": nnx.RMSNorm, "group": nnx.GroupNorm}


@pytest.mark.parametrize(("kind", "x", "ours_kw", "flax_kw"), [
    ("layer", X2, dict(), dict()),
    ("layer", X4, dict(), dict(reduction_axes=ALL4, feature_axes=-1)),
    ("rms", X4, dict(), dict(reduction_axes=ALL4, feature_axes=-1)),
    ("group", X4, dict(groups=2), dict(num_groups=2)),
])  # fmt: skip
def test_nnx_variant_equals_flax(kind, x, ours_kw, flax_kw):
    c = x.shape[-1]
    ours = variants_nnx.VARIANTS[kind](c, rngs=nnx.Rngs(0), **ours_kw)
    theirs = FLAX_NNX[kind](c, rngs=nnx.Rngs(0), **flax_kw)
    for m in (ours, theirs):  # the same non-trivial scale/bias in both
        m.scale[...] = 1 + 0.3 * jax.random.normal(jax.random.key(4), (c,))
        if getattr(m, "bias", None) is not None:
            m.bias[...] = 0.3 * jax.random.normal(jax.random.key(5), (c,))
    w = jax.random.normal(jax.random.key(9), x.shape)

    def loss(m, x):
        return jnp.sum(m(x) * w)

    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    g1 = nnx.grad(loss, argnums=(0, 1))(ours, x)
    g2 = nnx.grad(loss, argnums=(0, 1))(theirs, x)
    np.testing.assert_allclose(g1[1], g2[1], rtol=1e-4, atol=1e-4)
    for k in ("scale", "bias"):
        a, b = getattr(g1[0], k, None), getattr(g2[0], k, None)
        if a is not None and b is not None:
            np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-4)


def test_group_norm_that_cannot_fit_says_so():
    with pytest.raises(NormFitError, match=r"norm.groups=5 does not divide the 12 channels"):
        variants_linen.GroupNorm(groups=5).init(jax.random.key(0), X2)


def _paper_renorm(x, gamma, beta, mu, var, r_max, d_max, eps):
    """Ioffe 2017, Algorithm 1, written out in numpy (r and d as constants)."""
    x = np.asarray(x, np.float64)
    mu_b, var_b = x.mean(0), x.var(0)
    sigma_b, sigma = np.sqrt(var_b + eps), np.sqrt(var + eps)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mu_b - mu) / sigma, -d_max, d_max)
    return gamma * ((x - mu_b) / sigma_b * r + d) + beta, r, d


def test_batch_renorm_follows_the_paper():
    """Forward, the gradient with r and d held constant, and the running averages."""
    c = X2.shape[-1]
    layer = variants_linen.BatchRenorm(r_max=1.5, d_max=0.5, warmup=0, r_max_steps=1,
                                       d_max_steps=1, momentum=0.9)  # fmt: skip
    v = layer.init(jax.random.key(0), X2)
    mu = np.linspace(-1, 2, c).astype(np.float32)  # running stats far from the batch's
    var = np.linspace(0.2, 20, c).astype(np.float32)
    v = {"params": _perturbed(v["params"]),
         "batch_stats": {"mean": mu, "var": var, "steps": jnp.float32(10)}}  # fmt: skip
    gamma, beta = (np.asarray(v["params"][k]) for k in ("scale", "bias"))
    y, upd = layer.apply(v, X2, use_running_average=False, mutable=["batch_stats"])
    ref, r, d = _paper_renorm(X2, gamma, beta, mu, var, 1.5, 0.5, 1e-5)
    assert (r == 1.5).any() and (r < 1.5).any() and (np.abs(d) == 0.5).any()  # clipping bites
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.9 * mu + 0.1 * X2.mean(0), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 * var + 0.1 * X2.var(0), rtol=1e-5)
    assert float(upd["batch_stats"]["steps"]) == 11
    w = jax.random.normal(jax.random.key(9), X2.shape)

    def ours(x):
        return jnp.sum(layer.apply(v, x, use_running_average=False, mutable=["batch_stats"])[0] * w)

    def theirs(x):  # the paper's gradient: r and d treated as constants
        mu_b, var_b = x.mean(0), x.var(0)
        return jnp.sum((gamma * ((x - mu_b) / jnp.sqrt(var_b + 1e-5) * r + d) + beta) * w)

    np.testing.assert_allclose(jax.grad(ours)(X2), jax.grad(theirs)(X2), rtol=1e-4, atol=1e-5)
    y_eval = layer.apply(v, X2, use_running_average=True)
    np.testing.assert_allclose(y_eval, gamma * (X2 - mu) / np.sqrt(var + 1e-5) + beta, rtol=1e-5)


@pytest.mark.parametrize("x", [X2, X4])
def test_batch_renorm_at_rmax1_dmax0_is_bn(x):
    """Outputs, gradients (input and params) and running statistics equal bnlab's BN."""
    rn = variants_linen.BatchRenorm(r_max=1.0, d_max=0.0, warmup=0)
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    v = {"params": _perturbed(v["params"]),
         "batch_stats": {"mean": v["batch_stats"]["mean"] + 0.5, "var": v["batch_stats"]["var"] * 3}}  # fmt: skip
    vr = {"params": v["params"], "batch_stats": {**v["batch_stats"], "steps": jnp.float32(0)}}
    w = jax.random.normal(jax.random.key(9), x.shape)

    def run(m, var):
        def loss(p, x):
            y, upd = m.apply({**var, "params": p}, x, use_running_average=False,
                             mutable=["batch_stats"])  # fmt: skip
            return jnp.sum(y * w), (y, upd["batch_stats"])

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(var["params"], x)

    (g1, (y1, s1)), (g2, (y2, s2)) = run(rn, vr), run(bn, v)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g1, g2)
    for k in ("mean", "var"):
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-6)


def test_nnx_batch_renorm_equals_linen():
    x = X4
    lin = variants_linen.BatchRenorm(warmup=0, r_max_steps=1, d_max_steps=1)
    v = lin.init(jax.random.key(0), x)
    stats = {"mean": jnp.full((8,), 0.3), "var": jnp.full((8,), 2.0), "steps": jnp.float32(5)}
    y1, _ = lin.apply({**v, "batch_stats": stats}, x, use_running_average=False,
                      mutable=["batch_stats"])  # fmt: skip
    m = variants_nnx.BatchRenorm(8, warmup=0, r_max_steps=1, d_max_steps=1, rngs=nnx.Rngs(0))
    m.mean[...], m.var[...], m.steps[...] = stats["mean"], stats["var"], stats["steps"]
    np.testing.assert_allclose(m(x, use_running_average=True),
                               lin.apply({**v, "batch_stats": stats}, x, use_running_average=True),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(m(x), y1, rtol=1e-6)
    assert float(m.steps[...]) == 6


def test_renorm_warmup_schedule():
    """The paper's: (1, 0) for 5000 steps, then r_max 3 at 40k, d_max 5 at 25k."""
    kw = dict(r_max=3.0, d_max=5.0, warmup=5000, r_max_steps=40000, d_max_steps=25000)
    at = {
        s: tuple(float(v) for v in renorm_limits(s, **kw))
        for s in (0, 5000, 15000, 25000, 40000, 60000)
    }
    assert at[0] == at[5000] == (1.0, 0.0)
    assert at[15000] == pytest.approx((1 + 2 * 10 / 35, 2.5))
    assert at[25000][1] == at[40000][1] == 5.0 and at[40000][0] == at[60000][0] == 3.0


def test_weight_standardization():
    w = jax.random.normal(jax.random.key(0), (3, 3, 4, 6)) * 5 + 2
    dense = jnp.ones((4, 3))
    out = standardize_weights(
        {"conv": {"kernel": w, "bias": jnp.ones(6)}, "head": {"kernel": dense}}
    )
    k = np.asarray(out["conv"]["kernel"]).reshape(-1, 6)
    np.testing.assert_allclose(k.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(k.std(0), 1, atol=1e-3)
    assert out["head"]["kernel"] is dense and out["conv"]["bias"].shape == (6,)
