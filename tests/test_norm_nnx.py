"""bnlab's NNX BatchNorm (:class:`bnlab.norm.NNXBatchNorm`) against ``flax.nnx.BatchNorm``
and against bnlab's own linen module.

A property-based comparison with flax's NNX module (dtypes, both variance formulas,
masks, several steps, every way of switching to eval mode); equivalence with the linen
module on the same parameters (outputs, running stats and gradients, with bnlab's
switches); the state layout flax's NNX models expect; sync BN under ``jax.vmap``;
noisy BN's explicit keys; ``NoNorm``.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_norm import DTYPES, FLAX_TOL, STATS_TOL, rel_err

import bnlab.norm
from bnlab.norm import BatchNorm, NNXBatchNorm, NNXNoNorm, inject_noise

NNX_LAYOUTS = [  # flax.nnx.BatchNorm takes one feature axis
    ((8, 5), -1),
    ((2, 3), -1),
    ((32, 1), 1),
    ((6, 4, 3), -1),
    ((4, 5, 5, 3), -1),
    ((4, 3, 5, 5), 1),
]
EVAL_ROUTES = ["call", "eval()", "view", "constructor"]
N_EXAMPLES = 200


def set_params(bn, scale, bias):
    if scale is not None:
        bn.scale.set_value(scale)
    if bias is not None:
        bn.bias.set_value(bias)


def eval_output(bn, make, x, route):
    """Eval-mode output by one of the ways NNX offers to switch modes."""
    if route == "call":
        return bn(x, use_running_average=True)
    if route == "view":
        return nnx.view(bn, use_running_average=True)(x)
    if route == "constructor":
        fresh = make(use_running_average=True)
        nnx.update(fresh, nnx.state(bn))
        return fresh(x)
    bn.eval()
    assert bn.use_running_average is True
    y = bn(x)
    bn.train()
    assert bn.use_running_average is False
    return y


def test_module_is_the_nnx_one_too():
    assert bnlab.norm.nnx.BatchNorm is NNXBatchNorm and bnlab.norm.nnx.NoNorm is NNXNoNorm
    assert NNXBatchNorm.normalizes and not NNXNoNorm.normalizes


def test_matches_flax_nnx_batchnorm_property(record_property):
    """bnlab's NNX module == flax's in train and eval mode, step after step."""
    worst: dict[str, float] = {}
    cases: Counter = Counter()

    def track(key, err, tol, what):
        worst[key] = max(worst.get(key, 0.0), err)
        assert err <= tol, f"{what}: rel err {err:.3g} > {tol:.3g}"

    @settings(
        max_examples=N_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        layout=st.sampled_from(NNX_LAYOUTS),
        dtype=st.sampled_from(list(DTYPES)),
        half_params=st.booleans(),
        out_dtype=st.sampled_from([None, None, "float32", "bfloat16", "float16"]),
        momentum=st.floats(0.0, 0.999),
        log10_eps=st.floats(-7.0, -1.0),
        steps=st.integers(1, 4),
        loc=st.floats(-10.0, 10.0),
        log10_spread=st.floats(-2.0, 2.0),
        use_scale=st.booleans(),
        use_bias=st.booleans(),
        fast=st.booleans(),
        masked=st.booleans(),
        route=st.sampled_from(EVAL_ROUTES),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(
        layout,
        dtype,
        half_params,
        out_dtype,
        momentum,
        log10_eps,
        steps,
        loc,
        log10_spread,
        use_scale,
        use_bias,
        fast,
        masked,
        route,
        seed,
    ):
        shape, axis = layout
        dt = DTYPES[dtype]
        pdt = dt if half_params else jnp.float32
        rng = np.random.default_rng(seed)
        n = shape[axis]
        kw = dict(
            axis=axis,
            momentum=momentum,
            epsilon=10.0**log10_eps,
            use_scale=use_scale,
            use_bias=use_bias,
            param_dtype=pdt,
            dtype=out_dtype and DTYPES[out_dtype],
            use_fast_variance=fast,
        )
        make_ours = partial(NNXBatchNorm, n, rngs=nnx.Rngs(0), **kw)
        make_ref = partial(nnx.BatchNorm, n, rngs=nnx.Rngs(0), **kw)
        ours, ref = make_ours(), make_ref()
        scale = jnp.asarray(rng.normal(1.0, 0.5, n), pdt) if use_scale else None
        bias = jnp.asarray(rng.normal(0.0, 0.5, n), pdt) if use_bias else None
        for bn in (ours, ref):
            set_params(bn, scale, bias)
        for step in range(steps + 1):
            x = jnp.asarray(loc + 10.0**log10_spread * rng.standard_normal(shape), dt)
            if step < steps:
                mask = None
                if masked:
                    m = rng.random(shape) < 0.6
                    m[0] = True
                    mask = jnp.asarray(m)
                y, y_ref = ours(x, mask=mask), ref(x, mask=mask)
                for k in ("mean", "var"):
                    a, b = getattr(ours, k)[...], getattr(ref, k)[...]
                    assert a.dtype == b.dtype
                    track("batch_stats", rel_err(a, b), STATS_TOL, f"step {step} running {k}")
            else:
                y, y_ref = (
                    eval_output(ours, make_ours, x, route),
                    eval_output(ref, make_ref, x, route),
                )
            assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
            out = jnp.dtype(y_ref.dtype).name
            track(f"{dtype}->{out}", rel_err(y, y_ref), FLAX_TOL[out], f"step {step} y")
        cases[dtype] += 1
        cases[route] += 1

    check()
    summary = f"{N_EXAMPLES} hypothesis cases ({dict(cases)}); worst rel err vs flax.nnx: " + (
        ", ".join(f"{k}: {v:.3g}" for k, v in sorted(worst.items()))
    )
    print(summary)
    record_property("summary", summary)
    assert all(cases[r] >= 20 for r in EVAL_ROUTES)


# --------------------------------------------------------------------------------------
# NNX == linen (bnlab's two modules on the same parameters)
# --------------------------------------------------------------------------------------

EQUIV_CASES = {  # name: (input shape, module keywords)
    "dense": ((12, 5), {}),
    "fast variance": ((12, 5), dict(use_fast_variance=True)),
    "NCHW": ((4, 3, 3, 3), dict(axis=1)),
    "two feature axes": ((6, 4, 3), dict(axis=(1, 2))),
    "ghost batches": ((12, 4), dict(ghost_batch_size=4)),
    "center only": ((12, 4), dict(center_only=True)),
    "no stats grad": ((12, 4), dict(stats_grad=False)),
    "no scale or bias": ((12, 4), dict(use_scale=False, use_bias=False)),
    "half params": ((12, 4), dict(param_dtype=jnp.float16)),
    "one value per feature": ((1, 4), {}),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", list(EQUIV_CASES))
def test_nnx_equals_linen_on_the_same_parameters(case, masked):
    """Outputs, running stats and gradients (x, scale, bias) are equal, step after step,
    then in eval mode."""
    shape, kw = EQUIV_CASES[case]
    rng = np.random.default_rng(7)
    axes = kw.get("axis", -1)
    fshape = tuple(shape[a] for a in ((axes,) if isinstance(axes, int) else axes))
    kw = dict(momentum=0.7, epsilon=1e-4, **kw)
    ours = NNXBatchNorm(fshape if len(fshape) > 1 else fshape[0], rngs=nnx.Rngs(0), **kw)
    lin = BatchNorm(**kw)
    variables = lin.init(jax.random.key(0), jnp.ones(shape), use_running_average=False)
    params = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(1.0, 0.5, p.shape), p.dtype), variables.get("params", {})
    )
    variables = {**variables, "params": params}
    set_params(ours, params.get("scale"), params.get("bias"))
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)

    def linen_loss(p, x, stats, mask):
        y, upd = lin.apply(
            {"params": p, "batch_stats": stats},
            x,
            use_running_average=False,
            mutable=["batch_stats"],
            mask=mask,
        )
        return jnp.sum(y * w), (y, upd["batch_stats"])

    def nnx_loss(model, x, mask):
        y = model(x, mask=mask)
        return jnp.sum(y * w), y

    for _ in range(3):
        x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
        mask = None
        if masked:
            m = rng.random(shape) < 0.6
            m[0] = True
            mask = jnp.asarray(m)
        (_, (y_lin, stats)), (g_p, g_x) = jax.value_and_grad(
            linen_loss, argnums=(0, 1), has_aux=True
        )(params, x, variables["batch_stats"], mask)
        variables = {**variables, "batch_stats": stats}
        (_, y), (g_model, g_xn) = nnx.value_and_grad(nnx_loss, argnums=(0, 1), has_aux=True)(
            ours, x, mask
        )
        np.testing.assert_array_equal(y, y_lin)
        np.testing.assert_array_equal(ours.mean[...], stats["mean"])
        np.testing.assert_array_equal(ours.var[...], stats["var"])
        np.testing.assert_allclose(g_xn, g_x, rtol=1e-5, atol=1e-6)
        for k in g_p:
            np.testing.assert_allclose(g_model[k][...], g_p[k], rtol=1e-5, atol=1e-6)
    x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
    np.testing.assert_array_equal(
        ours(x, use_running_average=True), lin.apply(variables, x, use_running_average=True)
    )


def test_complex_input_nnx_equals_flax_in_train_mode_and_keeps_a_complex_mean():
    """Complex input: outputs and the (real) running variance equal flax.nnx's; the
    running mean stays complex, equal to the linen module's, where flax.nnx writes it
    into its float32 array and drops the imaginary part (with a warning)."""
    x = jax.random.normal(jax.random.key(0), (6, 3, 2), jnp.complex64) + (1.0 - 0.5j)
    kw = dict(momentum=0.9, dtype=jnp.complex64)
    ours = NNXBatchNorm(2, rngs=nnx.Rngs(0), **kw)
    ref = nnx.BatchNorm(2, rngs=nnx.Rngs(0), use_fast_variance=False, **kw)
    lin = BatchNorm(**kw)
    variables = lin.init(jax.random.key(0), x, use_running_average=False)
    y = ours(x)
    with pytest.warns(Warning):  # flax.nnx casts the complex mean to float32
        y_ref = ref(x)
    y_lin, upd = lin.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    assert y.dtype == jnp.complex64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y, y_lin)
    assert ours.var[...].dtype == jnp.float32
    np.testing.assert_array_equal(ours.var[...], ref.var[...])
    assert ours.mean[...].dtype == jnp.complex64
    np.testing.assert_array_equal(ours.mean[...], upd["batch_stats"]["mean"])
    np.testing.assert_allclose(ours.mean[...], 0.1 * x.mean((0, 1)), rtol=1e-6)
    np.testing.assert_array_equal(ours.mean[...].real, ref.mean[...])
    y_eval = ours(x, use_running_average=True)
    y_lin_eval = lin.apply({**variables, **upd}, x, use_running_average=True)
    np.testing.assert_array_equal(y_eval, y_lin_eval)


# --------------------------------------------------------------------------------------
# State layout and modes
# --------------------------------------------------------------------------------------


def test_state_layout_is_flax_nnx_so_one_replaces_the_other():
    ours = NNXBatchNorm(4, use_fast_variance=True, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    s_ours, s_ref = nnx.state(ours), nnx.state(ref)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
    for k in ("mean", "var", "scale", "bias"):
        assert type(s_ours[k]) is type(s_ref[k])
        assert s_ours[k][...].dtype == s_ref[k][...].dtype
        np.testing.assert_array_equal(s_ours[k][...], s_ref[k][...])
    assert isinstance(s_ours["mean"], nnx.BatchStat) and isinstance(s_ours["scale"], nnx.Param)
    assert nnx.state(NNXBatchNorm(4, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))).keys() == {
        "mean",
        "var",
    }

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.linear(x))

    x = jax.random.normal(jax.random.key(1), (8, 3))
    a, b = Net(nnx.Rngs(0)), Net(nnx.Rngs(0))
    a(x)  # a trained step, so the swap carries non-trivial statistics
    b(x)
    b.bn = NNXBatchNorm(4, use_fast_variance=True, rngs=nnx.Rngs(1))
    nnx.update(b, nnx.state(a))  # flax's state fits bnlab's module
    x2 = jax.random.normal(jax.random.key(2), (8, 3))
    np.testing.assert_array_equal(b(x2), a(x2))
    a.eval()
    b.eval()
    np.testing.assert_array_equal(b(x2), a(x2))


def test_use_running_average_from_call_attribute_train_eval_and_view():
    x = jax.random.normal(jax.random.key(0), (8, 3)) * 2.0 + 1.0
    bn = NNXBatchNorm(3, rngs=nnx.Rngs(0))
    assert bn.use_running_average is False  # flax's default
    y_train = bn(x)
    stats = nnx.clone(nnx.state(bn, nnx.BatchStat))
    assert not np.allclose(stats["mean"][...], 0.0)
    y_eval = bn(x, use_running_average=True)  # the call wins over the attribute
    assert not np.allclose(y_eval, y_train)
    np.testing.assert_array_equal(nnx.state(bn, nnx.BatchStat)["mean"][...], stats["mean"][...])
    bn.eval()
    np.testing.assert_array_equal(bn(x), y_eval)
    np.testing.assert_array_equal(bn(x, use_running_average=False), y_train)  # one more step
    bn.train()
    assert bn.use_running_average is False
    view = nnx.view(bn, use_running_average=True)
    assert view.use_running_average is True and bn.use_running_average is False
    with pytest.raises(ValueError, match="use_running_average"):
        NNXBatchNorm(3, use_running_average=None, rngs=nnx.Rngs(0))(x)


def test_feature_shape_mismatch_and_bad_axes_are_clear_errors():
    bn = NNXBatchNorm(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_features=3"):
        bn(jnp.ones((4, 5)))
    with pytest.raises(IndexError, match="tuple index out of range"):
        NNXBatchNorm(3, axis=2, rngs=nnx.Rngs(0))(jnp.ones((4, 3)))


def test_one_value_per_feature_returns_the_bias():
    bn = NNXBatchNorm(5, rngs=nnx.Rngs(0))
    bn.bias.set_value(jnp.arange(5.0))
    for shape in [(1, 5), (1, 1, 1, 5)]:
        x = jax.random.normal(jax.random.key(0), shape)
        np.testing.assert_array_equal(bn(x), jnp.broadcast_to(jnp.arange(5.0), shape))


# --------------------------------------------------------------------------------------
# Sync BN, noisy BN, NoNorm
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_sync_bn_under_vmap_equals_bn_over_the_whole_batch(fast):
    """``axis_name='batch'`` with the module run per example under
    ``jax.vmap(..., axis_name='batch')`` (state split out, broadcast in) equals BN over the
    whole batch: outputs and running statistics."""
    x = 0.5 + 2.0 * jax.random.normal(jax.random.key(3), (8, 2, 3))
    synced = NNXBatchNorm(3, axis_name="batch", use_fast_variance=fast, rngs=nnx.Rngs(0))
    whole = NNXBatchNorm(3, use_fast_variance=fast, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(synced)

    def one(state, xi):
        model = nnx.merge(graphdef, state)
        y = model(xi)
        return y, nnx.state(model)

    y, new_state = jax.vmap(one, in_axes=(None, 0), out_axes=(0, None), axis_name="batch")(state, x)
    y_all = whole(x)
    np.testing.assert_allclose(y, y_all, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state["mean"][...], whole.mean[...], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new_state["var"][...], whole.var[...], rtol=1e-5, atol=1e-7)


def test_noisy_bn_takes_an_explicit_key_in_train_mode_only():
    x = jax.random.normal(jax.random.key(0), (16, 3))
    bn = NNXBatchNorm(3, noise_mean=0.5, noise_std=0.2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="noise_key"):
        bn(x)
    np.testing.assert_allclose(bn(x, use_running_average=True), x / np.sqrt(1 + 1e-5), rtol=1e-6)
    plain = NNXBatchNorm(3, rngs=nnx.Rngs(0))
    key = jax.random.key(5)
    y = bn(x, noise_key=key)
    y_plain = plain(x)
    np.testing.assert_array_equal(y, inject_noise(y_plain, key, noise_mean=0.5, noise_std=0.2))
    assert not np.allclose(y, y_plain)
    np.testing.assert_array_equal(bn(x, noise_key=key), y)  # a function of the key
    assert not np.allclose(bn(x, noise_key=jax.random.key(6)), y)
    # zero magnitudes are plain BN and need no key
    np.testing.assert_array_equal(NNXBatchNorm(3, noise_mean=0.0, rngs=nnx.Rngs(0))(x), y_plain)


def test_noisy_layers_sharing_an_rngs_draw_their_own_keys_and_a_step_is_pure():
    """An ``nnx.Rngs(noise=key)`` made inside the step hands each noisy layer its own
    key; the jitted step is a function of (state, x, key) alone."""

    class Two(nnx.Module):
        def __init__(self, rngs):
            kw = dict(noise_mean=0.5, noise_std=0.5, rngs=rngs)
            self.a, self.b = NNXBatchNorm(3, **kw), NNXBatchNorm(3, **kw)

        def __call__(self, x, noise):
            return self.a(x, noise_key=noise), self.b(x, noise_key=noise)

    x = jax.random.normal(jax.random.key(0), (16, 3))
    graphdef, state = nnx.split(Two(nnx.Rngs(0)))

    @jax.jit
    def step(state, x, key):
        model = nnx.merge(graphdef, state)
        ya, yb = model(x, nnx.Rngs(noise=key))
        return ya, yb, nnx.state(model)

    ya, yb, _ = step(state, x, jax.random.key(1))
    assert not np.allclose(ya, yb)  # one key each
    ya2, yb2, _ = step(state, x, jax.random.key(1))
    np.testing.assert_array_equal(ya, ya2)
    np.testing.assert_array_equal(yb, yb2)
    ya3, _, _ = step(state, x, jax.random.key(2))
    assert not np.allclose(ya, ya3)
    # eager, the same keys: the same outputs (the Rngs' first two draws)
    rngs = nnx.Rngs(noise=jax.random.key(1))
    keys = [rngs.noise(), rngs.noise()]
    eager = nnx.merge(graphdef, state)
    np.testing.assert_allclose(eager.a(x, noise_key=keys[0]), ya, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(eager.b(x, noise_key=keys[1]), yb, rtol=1e-6, atol=1e-6)


def test_nnx_no_norm_is_the_identity_with_bn_signatures():
    x = jnp.arange(6.0).reshape(2, 3)
    norm = NNXNoNorm(3, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(norm(x, use_running_average=False, mask=None), x)
    assert not jax.tree.leaves(nnx.state(norm))
    assert NNXNoNorm()(x) is x


def test_linen_and_nnx_are_both_flax_modules():
    assert issubclass(BatchNorm, nn.Module) and issubclass(NNXBatchNorm, nnx.Module)
