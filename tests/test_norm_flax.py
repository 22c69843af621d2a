"""bnlab's linen BatchNorm through the behaviours flax's own BatchNorm tests check.

Each test below checks on :class:`bnlab.norm.BatchNorm` what a ``flax.linen``
BatchNorm test checks on flax's (statistics with and without a mask, complex input,
``bind`` with a mutable collection, sync BN under ``jax.vmap`` with an ``axis_name``,
``axis_name`` ignored at init), and compares with ``flax.linen.BatchNorm`` run on the
same variables. Then the API surface a drop-in needs: flax's field order, axes, integer
input, and a property-based comparison on complex input.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_norm import LAYOUTS, feature_shape, rel_err

from bnlab.norm import BatchNorm, NoNorm

FLAX_FIELDS = [f.name for f in dataclasses.fields(nn.BatchNorm) if f.name not in ("parent", "name")]
BNLAB_SWITCHES = ["stats_grad", "ghost_batch_size", "center_only", "noise_mean", "noise_std"]


def assert_same_tree(a, b):
    """Same structure, shapes, dtypes and values (bit for bit)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape, (u.dtype, v.dtype, u.shape, v.shape)
        np.testing.assert_array_equal(u, v)


def train_step(module, variables, x, **call):
    y, upd = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"], **call)
    return y, {**variables, **upd}


# --------------------------------------------------------------------------------------
# flax's BatchNorm tests, on bnlab's module
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "per_position"])
def test_batch_norm_statistics_and_running_averages(mask_kind, fast):
    """Train-mode output has mean 0 and variance 1 per feature over the counted values;
    one step from the fresh running stats gives 0.1 * mean and 0.9 + 0.1 * var."""
    kx, km = jax.random.split(jax.random.key(3))
    x = 1.5 + 2.0 * jax.random.normal(kx, (5, 4, 2))
    mask = None
    if mask_kind:  # which (example, position) pairs count; the same for both features
        mask = jnp.broadcast_to(jax.random.bernoulli(km, 0.6, (5, 4, 1)), x.shape)
        mask = mask.at[0].set(True)
        assert 0 < int(mask.sum()) < mask.size
    ours = BatchNorm(momentum=0.9, use_running_average=False, use_fast_variance=fast)
    y, variables = ours.init_with_output(jax.random.key(0), x, mask=mask)
    np.testing.assert_allclose(y.mean((0, 1), where=mask), [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(y.var((0, 1), where=mask), [1.0, 1.0], rtol=1e-4)
    assert_same_tree(variables["batch_stats"], {"mean": jnp.zeros(2), "var": jnp.ones(2)})

    y2, upd = ours.apply(variables, x, mask=mask, mutable=["batch_stats"])
    np.testing.assert_array_equal(y2, y)
    stats = upd["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean((0, 1), where=mask), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var((0, 1), where=mask), rtol=1e-5)
    if mask is not None:  # the mask matters: the unmasked statistics differ
        assert rel_err(stats["mean"], 0.1 * x.mean((0, 1))) > 1e-3

    ref = nn.BatchNorm(momentum=0.9, use_running_average=False, use_fast_variance=fast)
    y_ref, upd_ref = ref.apply(variables, x, mask=mask, mutable=["batch_stats"])
    np.testing.assert_array_equal(y2, y_ref)
    assert_same_tree(upd, upd_ref)


def test_batch_norm_complex_input():
    """Complex input: complex output with mean 0 and variance 1; complex running mean,
    real running variance ``0.9 + 0.1 * mean(|x - mean|^2)``, as flax."""
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (4, 3, 2), jnp.complex64) + 0.5j
    x = x + jax.random.normal(k2, (4, 3, 2), jnp.complex64)
    ours = BatchNorm(momentum=0.9, use_running_average=False, dtype=jnp.complex64)
    y, variables = ours.init_with_output(jax.random.key(0), x)
    assert y.dtype == jnp.complex64
    mean = y.mean((0, 1))
    assert mean.dtype == jnp.complex64
    np.testing.assert_allclose(mean, [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(y.var((0, 1)), [1.0, 1.0], rtol=1e-4)

    _, upd = ours.apply(variables, x, mutable=["batch_stats"])
    stats = upd["batch_stats"]
    assert stats["mean"].dtype == jnp.complex64 and stats["var"].dtype == jnp.float32
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean((0, 1)), rtol=1e-5)
    var_np = np.mean(np.abs(np.asarray(x) - np.asarray(x).mean((0, 1))) ** 2, (0, 1))
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var_np, rtol=1e-5)

    ref = nn.BatchNorm(
        momentum=0.9, use_running_average=False, dtype=jnp.complex64, use_fast_variance=False
    )
    assert_same_tree(upd, ref.apply(variables, x, mutable=["batch_stats"])[1])
    # eval mode with the complex running mean, as flax
    trained = {**variables, **upd}
    y_eval = ours.clone(use_running_average=True).apply(trained, x)
    np.testing.assert_array_equal(y_eval, ref.clone(use_running_average=True).apply(trained, x))
    np.testing.assert_allclose(
        y_eval.mean((0, 1)), 0.9 * x.mean((0, 1)) / np.sqrt(stats["var"] + 1e-5), rtol=1e-4
    )


@pytest.mark.parametrize("shape", [(4,), (6, 4)])
def test_bind_stateful(shape):
    """A module bound to its variables with ``batch_stats`` mutable gives what ``apply``
    gives, and holds the same updated statistics (a 1-D input: one value per feature)."""

    class Net(nn.Module):
        norm: type = BatchNorm

        def setup(self):
            self.a = nn.Dense(3)
            self.bn = self.norm()
            self.b = nn.Dense(1)

    def f(net, x):
        return net.b(net.bn(net.a(x), use_running_average=False))

    x = jax.random.normal(jax.random.key(2), shape)
    y1, variables = nn.init_with_output(f, Net())(jax.random.key(0), x)
    bound = Net().bind(variables, mutable="batch_stats")
    y2 = f(bound, x)
    y3, state = nn.apply(f, Net(), mutable="batch_stats")(variables, x)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y2, y3)
    assert_same_tree(state["batch_stats"], bound.variables["batch_stats"])
    assert not np.allclose(state["batch_stats"]["bn"]["mean"], 0.0)  # it did update
    # flax's BatchNorm in the same net, same variables: same numbers
    y_ref, state_ref = nn.apply(f, Net(norm=nn.BatchNorm), mutable="batch_stats")(variables, x)
    np.testing.assert_allclose(y3, y_ref, rtol=1e-6, atol=1e-6)
    for k in ("mean", "var"):
        np.testing.assert_allclose(
            state["batch_stats"]["bn"][k], state_ref["batch_stats"]["bn"][k], rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("shape", [(8, 3), (8, 2, 2, 3)])
def test_vmap_with_axis_name_equals_bn_over_the_whole_batch(shape, fast):
    """BN inside ``jax.vmap(..., axis_name='batch')`` with ``axis_name='batch'``, one
    example per vmapped call, equals BN over the whole batch, outputs and running stats."""
    x = 0.5 + 2.0 * jax.random.normal(jax.random.key(4), shape)
    kw = dict(momentum=0.8, use_fast_variance=fast, use_running_average=False)
    synced, whole = BatchNorm(axis_name="batch", **kw), BatchNorm(**kw)
    variables = synced.init(jax.random.key(0), x)  # axis_name is not bound at init
    variables = jax.tree.map(lambda v: v + 0.25, variables)  # not the fresh values

    def one(xi):
        return synced.apply(variables, xi, mutable=["batch_stats"])

    y, upd = jax.vmap(one, axis_name="batch", out_axes=(0, None))(x)
    y_all, upd_all = whole.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_all, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(
            upd["batch_stats"][k], upd_all["batch_stats"][k], rtol=1e-5, atol=1e-6
        )
    # and flax's module under the same vmap gives the same
    ref = nn.BatchNorm(axis_name="batch", **kw)
    y_ref, _ = jax.vmap(
        lambda xi: ref.apply(variables, xi, mutable=["batch_stats"]),
        axis_name="batch",
        out_axes=(0, None),
    )(x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_axis_name_is_ignored_at_init_and_a_module_reused_twice():
    """Init runs outside the named axis: with axis_name set, init works, and a module
    called twice in one net shares its variables (as flax's multi-init test)."""

    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            norm = BatchNorm(use_running_average=False, axis_name="batch", name="norm")
            y = norm(x)
            return y, norm(y)

    x = jnp.asarray([[0.0, 1.0, 2.0, 3.0], [4.0, 6.0, 8.0, 10.0]])  # variances >> epsilon
    (y1, y2), variables = Twice().init_with_output(jax.random.key(0), x)
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-5)
    assert set(variables["params"]) == {"norm"}


# --------------------------------------------------------------------------------------
# The API a drop-in needs
# --------------------------------------------------------------------------------------


def test_positional_fields_are_flax_fields_then_keyword_only_switches():
    ours = [f.name for f in dataclasses.fields(BatchNorm) if f.name not in ("parent", "name")]
    assert "force_float32_reductions" in FLAX_FIELDS
    assert ours[: len(FLAX_FIELDS)] == FLAX_FIELDS
    params = inspect.signature(BatchNorm).parameters
    for name in FLAX_FIELDS:
        assert params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
    for name in BNLAB_SWITCHES:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    # flax's defaults, except bnlab's two-pass variance
    for name in FLAX_FIELDS:
        if name != "use_fast_variance":
            assert params[name].default == getattr(nn.BatchNorm, name), name
    assert BatchNorm.use_fast_variance is False and nn.BatchNorm.use_fast_variance is True
    # every positional field can be passed positionally, as to flax's
    args = (False, 1, 0.5, 1e-3, jnp.float32, jnp.float32, False, True)
    args += (nn.initializers.zeros, nn.initializers.ones, None, None, True, False)
    assert len(args) == len(FLAX_FIELDS)
    x = jax.random.normal(jax.random.key(0), (6, 3, 2))
    y, v = BatchNorm(*args).init_with_output(jax.random.key(0), x)
    y_ref, v_ref = nn.BatchNorm(*args).init_with_output(jax.random.key(0), x)
    np.testing.assert_array_equal(y, y_ref)
    assert_same_tree(v, v_ref)
    with pytest.raises(TypeError):
        BatchNorm(*args, True)  # stats_grad is keyword-only


def test_no_norm_takes_the_call_signature():
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(NoNorm().apply({}, x, use_running_average=False, mask=None), x)


@pytest.mark.parametrize("axis", [(1, 1), (-1, 2), (2, 1, -1)])
def test_an_axis_named_twice_is_one_axis_as_flax(axis):
    x = jax.random.normal(jax.random.key(0), (4, 3, 2))
    y, v = BatchNorm(use_fast_variance=True, axis=axis).init_with_output(
        jax.random.key(1), x, use_running_average=False
    )
    y_ref, v_ref = nn.BatchNorm(axis=axis).init_with_output(
        jax.random.key(1), x, use_running_average=False
    )
    assert_same_tree(v, v_ref)
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("axis", [3, 5, (1, 3), -7])
def test_an_out_of_range_axis_raises_index_error_as_flax(axis):
    x = jnp.ones((4, 3, 2))
    with pytest.raises(IndexError, match="tuple index out of range"):
        nn.BatchNorm(axis=axis).init(jax.random.key(0), x, use_running_average=False)
    with pytest.raises(IndexError, match=r"tuple index out of range: feature axis -?\d"):
        BatchNorm(axis=axis).init(jax.random.key(0), x, use_running_average=False)


def test_an_axis_just_below_minus_rank_raises_instead_of_wrapping():
    """flax maps axis -4 of a rank-3 input to -1 (rank + axis) and runs on, reducing
    over every axis; bnlab refuses it like any other out-of-range axis."""
    x = jnp.ones((4, 3, 2))
    nn.BatchNorm(axis=-4).init(jax.random.key(0), x, use_running_average=False)  # no error
    with pytest.raises(IndexError):
        BatchNorm(axis=-4).init(jax.random.key(0), x, use_running_average=False)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8])
def test_integer_input_without_scale_and_bias_comes_out_float(dtype):
    x = jnp.asarray([[0, 3, 7], [1, 2, 4], [5, 5, 6], [2, 9, 1]], dtype)
    kw = dict(use_scale=False, use_bias=False, use_running_average=False)
    y, v = BatchNorm(**kw).init_with_output(jax.random.key(0), x)
    y_ref, _ = nn.BatchNorm(use_fast_variance=False, **kw).init_with_output(jax.random.key(0), x)
    assert y.dtype == y_ref.dtype == jnp.float32
    np.testing.assert_array_equal(y, y_ref)
    xf = np.asarray(x, np.float64)
    expected = (xf - xf.mean(0)) / np.sqrt(xf.var(0) + 1e-5)
    assert rel_err(y, expected) < 1e-6  # not truncated to integers
    # eval mode too, from float32 running statistics
    v = {"batch_stats": {"mean": jnp.full(3, 0.5), "var": jnp.full(3, 4.0)}}
    y_eval = BatchNorm(use_scale=False, use_bias=False).apply(v, x, use_running_average=True)
    assert y_eval.dtype == jnp.float32
    assert rel_err(y_eval, (xf - 0.5) / np.sqrt(4.0 + 1e-5)) < 1e-6


def test_dtype_must_be_inexact_as_flax():
    x = jnp.ones((4, 3))
    for module in (BatchNorm(dtype=jnp.int32), nn.BatchNorm(dtype=jnp.int32)):
        with pytest.raises(ValueError, match="Dtype must be inexact"):
            module.init(jax.random.key(0), x, use_running_average=False)


# --------------------------------------------------------------------------------------
# Complex input: property-based against flax
# --------------------------------------------------------------------------------------

N_COMPLEX = 120


def test_complex_input_matches_flax_property(record_property):
    """Complex input, with either variance formula and with or without a mask: outputs
    and running stats equal flax's, step after step, and the running variance is real
    (absolute errors: outputs are O(1), running stats O(1) to O(10))."""
    worst: Counter = Counter()

    @settings(
        max_examples=N_COMPLEX,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        layout=st.sampled_from(LAYOUTS),
        fast=st.booleans(),
        masked=st.booleans(),
        out_complex=st.booleans(),
        use_scale=st.booleans(),
        use_bias=st.booleans(),
        momentum=st.floats(0.0, 0.999),
        steps=st.integers(1, 3),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(layout, fast, masked, out_complex, use_scale, use_bias, momentum, steps, seed):
        shape, axis = layout
        rng = np.random.default_rng(seed)
        kw = dict(
            axis=axis,
            momentum=momentum,
            use_fast_variance=fast,
            use_scale=use_scale,
            use_bias=use_bias,
            dtype=jnp.complex64 if out_complex else None,
        )
        ours, ref = BatchNorm(**kw), nn.BatchNorm(**kw)
        fshape = feature_shape(shape, axis)
        params = {}
        if use_scale:
            params["scale"] = jnp.asarray(rng.normal(1.0, 0.5, fshape), jnp.float32)
        if use_bias:
            params["bias"] = jnp.asarray(rng.normal(0.0, 0.5, fshape), jnp.float32)
        v = v_ref = {
            "params": params,
            "batch_stats": {"mean": jnp.zeros(fshape), "var": jnp.ones(fshape)},
        }
        for _ in range(steps):
            x = rng.normal(1.0, 2.0, shape) + 1j * rng.normal(-0.5, 1.0, shape)
            x = jnp.asarray(x, jnp.complex64)
            mask = None
            if masked:
                m = rng.random(shape) < 0.6
                m[0] = True
                mask = jnp.asarray(m)
            y, v = train_step(ours, v, x, mask=mask)
            y_ref, v_ref = train_step(ref, v_ref, x, mask=mask)
            assert y.dtype == y_ref.dtype == jnp.complex64
            assert v["batch_stats"]["var"].dtype == jnp.float32
            worst["y"] = max(worst["y"], float(np.max(np.abs(y - y_ref))))
            for k in ("mean", "var"):
                a, b = v["batch_stats"][k], v_ref["batch_stats"][k]
                assert a.dtype == b.dtype
                worst[k] = max(worst[k], float(np.max(np.abs(a - b))))
        y = ours.apply(v, x, use_running_average=True)
        y_ref = ref.apply(v_ref, x, use_running_average=True)
        worst["y eval"] = max(worst["y eval"], float(np.max(np.abs(y - y_ref))))
        assert max(worst.values()) <= 1e-6, dict(worst)

    check()
    summary = f"{N_COMPLEX} complex cases; worst error vs flax: " + ", ".join(
        f"{k}: {e:.3g}" for k, e in sorted(worst.items())
    )
    print(summary)
    record_property("summary", summary)
