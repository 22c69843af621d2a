"""Tests of the batch-norm core (:mod:`bnlab.norm`).

References: ``flax.linen.BatchNorm`` (a property-based test over shapes, feature
axes, momentum, epsilon, dtypes, both variance formulas, masks and several
running-average steps; flax's own BatchNorm tests, complex input and NNX are in
``test_norm_flax.py`` and ``test_norm_nnx.py``), PyTorch's ``BatchNorm1d``/``BatchNorm2d`` (outputs stored in
``tests/data/torch_batchnorm_reference.json``), float64 central finite differences,
and numpy in float64.

Relative error, used throughout: for a result ``a`` and a reference ``b`` (whole
arrays), ``rel_err(a, b) = max|a - b| / max(max|b|, tiny)``, computed in float64
(``tiny`` is float32's smallest normal number; a NaN anywhere makes it NaN, which
fails every bound).

The worst errors seen against flax and PyTorch are printed in the "summaries"
section at the end of the pytest run (see ``tests/conftest.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnlab.norm import (
    BatchNorm,
    NoNorm,
    batch_norm,
    batch_stats,
    biased_var,
    torch_momentum,
    unbiased_var,
    values_per_feature,
)

FIXTURE = Path(__file__).parent / "data" / "torch_batchnorm_reference.json"
TINY = float(np.finfo(np.float32).tiny)


def rel_err(a, b) -> float:
    """``max|a - b| / max(max|b|, tiny)`` over whole arrays, in float64 (see module doc)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY))


def feature_shape(shape, axis) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(shape[a] for a in sorted(a % len(shape) for a in axes))


def reduce_axes(ndim, axis) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, int) else axis
    feat = {a % ndim for a in axes}
    return tuple(a for a in range(ndim) if a not in feat)


def train_bn(x, scale, bias, **kw):
    """Train-mode ``batch_norm`` from fresh running statistics (mean 0, var 1), as a
    layer's first step sees them: ``(y, running mean, running var)``."""
    fshape = scale.shape
    return batch_norm(
        x, scale, bias, jnp.zeros(fshape), jnp.ones(fshape), use_running_average=False, **kw
    )


def np_batch_norm(x, scale, bias, axis, epsilon):
    """Train-mode BN in float64 numpy: (y, batch mean, biased batch var)."""
    x = np.asarray(x, np.float64)
    red = reduce_axes(x.ndim, axis)
    mean = x.mean(red, keepdims=True)
    var = ((x - mean) ** 2).mean(red, keepdims=True)
    fshape = [1 if a in red else s for a, s in enumerate(x.shape)]
    y = (x - mean) / np.sqrt(var + epsilon) * np.reshape(scale, fshape) + np.reshape(bias, fshape)
    return y, np.squeeze(mean, red), np.squeeze(var, red)


# --------------------------------------------------------------------------------------
# Equality with flax.linen.BatchNorm: property-based
# --------------------------------------------------------------------------------------

# (input shape, feature axis): a small fixed set, so JAX's per-shape op cache stays warm
# and several hundred eager cases run in seconds.
LAYOUTS = [
    ((8, 5), -1),
    ((2, 3), -1),  # the smallest legal batch
    ((32, 1), 1),
    ((6, 4, 3), -1),
    ((6, 4, 3), (1, 2)),  # two feature axes
    ((4, 5, 5, 3), -1),  # NHWC conv
    ((4, 3, 5, 5), 1),  # NCHW conv
    ((3, 2, 4, 4), (1, 3)),
]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
N_EXAMPLES = 400
STATS_TOL = 1e-6  # running statistics are float32 whatever the input dtype
FLAX_TOL = {"float32": 1e-6, "bfloat16": 2.0**-7, "float16": 2.0**-10}  # by output dtype


def test_module_variables_match_flax():
    x = jnp.ones((4, 3, 5))
    for axis in (-1, 1, (1, 2)):
        ours = BatchNorm(axis=axis).init(jax.random.key(0), x, use_running_average=False)
        ref = nn.BatchNorm(axis=axis).init(jax.random.key(0), x, use_running_average=False)
        assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
            lambda a: (a.shape, a.dtype), ref
        )
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(a, b)  # init leaves the running stats at 0 / 1


def test_matches_flax_batchnorm_property(record_property):
    """bnlab's module == flax's in train and eval mode, step after step, with either
    variance formula and with or without a mask."""
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
        layout=st.sampled_from(LAYOUTS),
        dtype=st.sampled_from(list(DTYPES)),
        half_params=st.booleans(),
        out_dtype=st.sampled_from([None, None, "float32", "bfloat16", "float16"]),
        momentum=st.floats(0.0, 0.999),
        log10_eps=st.floats(-7.0, -1.0),
        steps=st.integers(1, 6),
        loc=st.floats(-10.0, 10.0),
        log10_spread=st.floats(-2.0, 2.0),
        use_scale=st.booleans(),
        use_bias=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
        fast=st.booleans(),
        mask_kind=st.sampled_from([None, None, "full", "batch"]),
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
        seed,
        fast,
        mask_kind,
    ):
        shape, axis = layout
        dt = DTYPES[dtype]
        # half params make the output half too (flax infers the output dtype from both)
        pdt = dt if half_params else jnp.float32
        rng = np.random.default_rng(seed)

        def draw_x():
            x = loc + 10.0**log10_spread * rng.standard_normal(shape)
            return jnp.asarray(x, dt)

        def draw_mask():  # example 0 always counts, so no feature is left without values
            if mask_kind is None:
                return None
            m = rng.random(shape if mask_kind == "full" else shape[:1] + (1,) * (len(shape) - 1))
            m = m < 0.6
            m[0] = True
            return jnp.asarray(m)

        kw = dict(
            axis=axis,
            momentum=momentum,
            epsilon=10.0**log10_eps,
            use_scale=use_scale,
            use_bias=use_bias,
            param_dtype=pdt,
            dtype=out_dtype and DTYPES[out_dtype],  # None: inferred from x and params
        )
        ours = BatchNorm(use_fast_variance=fast, **kw)
        ref = nn.BatchNorm(use_fast_variance=fast, **kw)
        fshape = feature_shape(shape, axis)
        params = {}
        if use_scale:
            params["scale"] = jnp.asarray(rng.normal(1.0, 0.5, fshape), pdt)
        if use_bias:
            params["bias"] = jnp.asarray(rng.normal(0.0, 0.5, fshape), pdt)
        stats0 = {"mean": jnp.zeros(fshape), "var": jnp.ones(fshape)}
        v_ours = {"params": params, "batch_stats": stats0}
        v_ref = {"params": params, "batch_stats": stats0}

        for step in range(steps + 1):
            x, mask = draw_x(), draw_mask()
            train = step < steps  # `steps` train steps, then one eval step
            if train:
                y, upd = ours.apply(
                    v_ours, x, use_running_average=False, mutable=["batch_stats"], mask=mask
                )
                y_ref, upd_ref = ref.apply(
                    v_ref, x, use_running_average=False, mutable=["batch_stats"], mask=mask
                )
                v_ours = {**v_ours, **upd}
                v_ref = {**v_ref, **upd_ref}
                for k in ("mean", "var"):
                    a, b = v_ours["batch_stats"][k], v_ref["batch_stats"][k]
                    assert a.dtype == b.dtype
                    track("batch_stats", rel_err(a, b), STATS_TOL, f"step {step} running {k}")
            else:
                y = ours.apply(v_ours, x, use_running_average=True, mask=mask)  # mask unused
                y_ref = ref.apply(v_ref, x, use_running_average=True, mask=mask)
            assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
            out = jnp.dtype(y_ref.dtype).name
            key = f"{dtype}->{out}"
            track(
                key,
                rel_err(y, y_ref),
                FLAX_TOL[out],
                f"step {step} ({'train' if train else 'eval'}) y",
            )
        cases[dtype] += 1
        cases["fast variance"] += fast
        cases["masked"] += mask_kind is not None

    check()
    summary = (
        f"{sum(cases[d] for d in DTYPES)} hypothesis cases ({dict(cases)}); worst rel err vs flax: "
        + ", ".join(f"{k}: {v:.3g}" for k, v in sorted(worst.items()))
    )
    print(summary)
    record_property("summary", summary)
    assert sum(cases[d] for d in DTYPES) >= 300
    assert cases["fast variance"] >= 100 and cases["masked"] >= 100


X64_MIXES = [  # (input dtype, module dtype, param dtype), with x64 enabled
    ("float64", None, "float64"),
    ("float32", "float64", "float32"),  # statistics in float64, as flax
    ("float32", None, "float64"),
    ("float64", "float32", "float32"),
    ("float64", "bfloat16", "float32"),
    ("bfloat16", "float64", "float64"),
]
X64_TOL = {"float64": 1e-12, "float32": 1e-6, "bfloat16": 2.0**-7}


@pytest.mark.parametrize("mix", X64_MIXES, ids=lambda m: "-".join(map(str, m)))
@pytest.mark.parametrize("shape,axis", [((8, 5), -1), ((4, 3, 5, 5), 1), ((6, 4, 3), (1, 2))])
def test_matches_flax_batchnorm_with_x64(shape, axis, mix):
    """The same comparison with float64 in play (x64 enabled only inside this test)."""
    x_dtype, dtype, param_dtype = mix
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        fshape = feature_shape(shape, axis)
        kw = dict(axis=axis, momentum=0.9, epsilon=1e-4, dtype=dtype, param_dtype=param_dtype)
        ours, ref = BatchNorm(**kw), nn.BatchNorm(use_fast_variance=False, **kw)
        v_ref = ref.init(jax.random.key(0), jnp.ones(shape, x_dtype), use_running_average=False)
        params = {
            k: jnp.asarray(rng.normal(1, 0.5, fshape), param_dtype) for k in ("scale", "bias")
        }
        v_ours = v_ref = {"params": params, "batch_stats": v_ref["batch_stats"]}
        for step in range(4):
            x = jnp.asarray(2.0 + 3.0 * rng.standard_normal(shape), x_dtype)
            if step < 3:
                y, upd = ours.apply(v_ours, x, use_running_average=False, mutable=["batch_stats"])
                y_ref, upd_ref = ref.apply(
                    v_ref, x, use_running_average=False, mutable=["batch_stats"]
                )
                for k in ("mean", "var"):
                    a, b = upd["batch_stats"][k], upd_ref["batch_stats"][k]
                    assert a.dtype == b.dtype and rel_err(a, b) < X64_TOL[a.dtype.name]
                v_ours, v_ref = {**v_ours, **upd}, {**v_ref, **upd_ref}
            else:
                y = ours.apply(v_ours, x, use_running_average=True)
                y_ref = ref.apply(v_ref, x, use_running_average=True)
            assert y.dtype == y_ref.dtype
            assert rel_err(y, y_ref) < X64_TOL[y.dtype.name]


def test_two_pass_variance_is_stable_where_the_fast_form_fails():
    """Large mean, small spread (flax#1491): E[x^2] - E[x]^2 cancels catastrophically in
    float32; bnlab's two-pass variance stays correct against float64 numpy."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(1000.0 + 0.05 * rng.standard_normal((256, 4)), jnp.float32)
    y_np, _, var_np = np_batch_norm(x, np.ones(4), np.zeros(4), -1, 1e-5)  # var ~ 2.4e-3

    _, var = batch_stats(x)
    assert rel_err(var, var_np) < 1e-5
    for module in (BatchNorm(), nn.BatchNorm(use_fast_variance=False)):
        y, _ = module.init_with_output(jax.random.key(0), x, use_running_average=False)
        # the float32 mean's rounding (~1e-4 of 1000) limits y, not the variance
        assert np.all(np.isfinite(y)) and rel_err(y, y_np) < 1e-3

    fast = nn.BatchNorm(use_fast_variance=True, momentum=0.0)  # running var = batch var
    variables = fast.init(jax.random.key(0), x, use_running_average=False)
    y_fast, upd = fast.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    # the fast form returns a variance off by orders of magnitude (0 or float32 ulps of
    # E[x^2] ~ 1e6, clamped at 0), and outputs off by more than their own size
    assert rel_err(upd["batch_stats"]["var"], var_np) > 1.0
    assert rel_err(y_fast, y_np) > 1.0


# --------------------------------------------------------------------------------------
# Equality with PyTorch (stored reference outputs)
# --------------------------------------------------------------------------------------


def _torch_cases():
    return json.loads(FIXTURE.read_text())["cases"]


def _run_torch_case(case, dtype):
    """bnlab through PyTorch's 3 train steps and 1 eval step; returns the rel errors.

    Conversion (see bnlab.norm's docstring): momentum = 1 - momentum_torch; running mean
    compared directly; running var started at ``biased_var(1, n)`` so that
    ``unbiased_var(running_var, n)`` is PyTorch's stored value after every step, and
    passed unbiased in eval mode (PyTorch normalizes with its unbiased running var).
    """
    axis = 1  # NC (BatchNorm1d) and NCHW (BatchNorm2d): features on axis 1
    momentum = torch_momentum(case["momentum_torch"])
    eps = case["eps"]
    w = jnp.asarray(case["weight"], dtype)
    b = jnp.asarray(case["bias"], dtype)
    xs = [np.asarray(s["x"]) for s in case["steps"]]
    n = xs[0].size // xs[0].shape[axis]  # elements per feature: N (dense), N*H*W (conv)
    assert all(x.shape == xs[0].shape for x in xs)
    mean = jnp.zeros(w.shape, dtype)
    var = biased_var(jnp.ones(w.shape, dtype), n)
    errs = {"y_train": 0.0, "running_mean": 0.0, "running_var": 0.0}
    for x, step in zip(xs, case["steps"], strict=True):
        y, mean, var = batch_norm(
            jnp.asarray(x, dtype),
            w,
            b,
            mean,
            var,
            use_running_average=False,
            axis=axis,
            momentum=momentum,
            epsilon=eps,
        )
        assert y.dtype == dtype and mean.dtype == dtype and var.dtype == dtype
        for k, got in (
            ("y_train", y),
            ("running_mean", mean),
            ("running_var", unbiased_var(var, n)),
        ):
            errs[k] = max(errs[k], rel_err(got, step[k]))
    y_eval, _, _ = batch_norm(
        jnp.asarray(case["x_eval"], dtype),
        w,
        b,
        mean,
        unbiased_var(var, n),
        use_running_average=True,
        axis=axis,
        momentum=momentum,
        epsilon=eps,
    )
    errs["y_eval"] = rel_err(y_eval, case["y_eval"])
    return errs, (mean, var, n)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_matches_pytorch_reference(dtype, tol, record_property):
    worst = {}
    with jax.enable_x64(dtype == "float64"):
        for case in _torch_cases():
            errs, (_, var, n) = _run_torch_case(case, jnp.dtype(dtype))
            for k, e in errs.items():
                assert e < tol, f"{case['name']} {k}: rel err {e:.3g}"
            worst[case["name"]] = max(errs.values())
            if dtype == "float64":
                # the subtlety: starting from 1 and converting only at the end is not
                # PyTorch's number, because PyTorch's initial 1 is never rescaled
                naive = _naive_running_var(case, n)
                assert rel_err(naive, case["steps"][-1]["running_var"]) > 1e-4
    summary = f"{dtype}: worst rel err vs torch: " + ", ".join(
        f"{k}: {v:.3g}" for k, v in worst.items()
    )
    print(summary)
    record_property("summary", summary)


def _naive_running_var(case, n):
    """bnlab's running var started at 1 (flax's init), converted with unbiased_var at the end."""
    var = jnp.ones(len(case["weight"]))
    mean = jnp.zeros_like(var)
    for step in case["steps"]:
        _, mean, var = batch_norm(
            jnp.asarray(step["x"]),
            None,
            None,
            mean,
            var,
            use_running_average=False,
            axis=1,
            momentum=torch_momentum(case["momentum_torch"]),
            epsilon=case["eps"],
        )
    return unbiased_var(var, n)


def test_torch_fixture_has_dense_and_conv_cases():
    # the project's own copy (tests/data), never ../shared at test time
    assert FIXTURE.parent.parent == Path(__file__).parent
    data = json.loads(FIXTURE.read_text())
    assert {c["layout"] for c in data["cases"]} == {"NC", "NCHW"}
    assert all(len(c["steps"]) == 3 for c in data["cases"])


def test_conversions_round_trip():
    assert torch_momentum(0.99) == pytest.approx(0.01)
    assert torch_momentum(torch_momentum(0.9)) == pytest.approx(0.9)
    v = jnp.asarray([0.5, 2.0])
    np.testing.assert_allclose(unbiased_var(v, 8), v * 8 / 7, rtol=1e-7)
    np.testing.assert_allclose(biased_var(unbiased_var(v, 8), 8), v, rtol=1e-7)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------

GRAD_CASES = [  # (shape, feature axis, ghost batch size)
    ((6, 3), -1, None),
    ((3, 3, 3, 2), -1, None),  # NHWC
    ((2, 3, 3, 3), 1, None),  # NCHW
    ((8, 3), -1, 4),  # ghost batches
]


def _grad_problem(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    fshape = feature_shape(shape, axis)
    x = rng.normal(1.0, 2.0, shape)
    scale = rng.normal(1.0, 0.3, fshape)
    bias = rng.normal(0.0, 0.3, fshape)
    w = rng.normal(size=shape)
    return x, scale, bias, w


@pytest.mark.parametrize("shape,axis,ghost", GRAD_CASES)
def test_gradient_matches_finite_differences(shape, axis, ghost):
    """Backprop through the batch statistics == float64 central differences (h = 1e-6)."""
    with jax.enable_x64(True):
        x, scale, bias, w = _grad_problem(shape, axis)

        def loss(x, scale, bias):
            y, _, _ = train_bn(x, scale, bias, axis=axis, epsilon=1e-3, ghost_batch_size=ghost)
            return jnp.sum(y * w)

        args = (x, scale, bias)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
        f = jax.jit(loss)
        h = 1e-6
        for i, (arg, g) in enumerate(zip(args, grads, strict=True)):
            assert g.dtype == jnp.float64
            fd = np.zeros_like(arg)
            for idx in np.ndindex(arg.shape):
                plus, minus = arg.copy(), arg.copy()
                plus[idx] += h
                minus[idx] -= h
                a_p = list(args)
                a_m = list(args)
                a_p[i], a_m[i] = plus, minus
                fd[idx] = (float(f(*a_p)) - float(f(*a_m))) / (2 * h)
            assert rel_err(g, fd) < 1e-6, f"argument {i}: rel err {rel_err(g, fd):.3g}"


@pytest.mark.parametrize("shape,axis,ghost", GRAD_CASES[:3])
def test_stats_grad_false_gives_the_constant_statistics_gradient(shape, axis, ghost):
    """With stats_grad=False the gradient treats the batch mean/var as constants."""
    with jax.enable_x64(True):
        x, scale, bias, w = _grad_problem(shape, axis, seed=1)
        eps = 1e-3

        def loss(x, scale, bias, stats_grad):
            y, _, _ = train_bn(x, scale, bias, axis=axis, epsilon=eps, stats_grad=stats_grad)
            return jnp.sum(y * w)

        gx, gs, gb = jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias, False)

        red = reduce_axes(x.ndim, axis)
        bshape = [1 if a in red else s for a, s in enumerate(x.shape)]
        mean = x.mean(red, keepdims=True)
        inv = 1.0 / np.sqrt(((x - mean) ** 2).mean(red, keepdims=True) + eps)
        xhat = (x - mean) * inv
        np.testing.assert_allclose(gx, w * inv * scale.reshape(bshape), rtol=1e-10)
        np.testing.assert_allclose(gs, (w * xhat).sum(red), rtol=1e-10)
        np.testing.assert_allclose(gb, w.sum(red), rtol=1e-10)

        # and it is not the full gradient: the statistics' part matters
        gx_full = jax.grad(loss)(x, scale, bias, True)
        assert rel_err(gx, gx_full) > 1e-2


# --------------------------------------------------------------------------------------
# Identities and edge cases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((64, 5), -1), ((4, 6, 6, 3), -1), ((4, 3, 6, 6), 1)])
def test_identity_recovery(shape, axis):
    """gamma = sqrt(var + eps), beta = mean of the batch: train-mode BN returns its input."""
    eps = 1e-5
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, shape), jnp.float32)
    mean, var = batch_stats(x, axis=axis)
    scale = jnp.sqrt(var + eps)
    y, _, _ = train_bn(x, scale, mean, axis=axis, epsilon=eps)
    assert rel_err(y, x) < 1e-6
    # the same through the module, with the parameters set to the batch statistics
    y_mod, _ = BatchNorm(axis=axis, epsilon=eps).apply(
        {
            "params": {"scale": scale, "bias": mean},
            "batch_stats": {"mean": mean * 0, "var": var * 0 + 1},
        },
        x,
        use_running_average=False,
        mutable=["batch_stats"],
    )
    assert rel_err(y_mod, x) < 1e-6
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x), jnp.float64)
        mean, var = batch_stats(x64, axis=axis)
        y, _, _ = batch_norm(
            x64,
            jnp.sqrt(var + eps),
            mean,
            mean,
            var,
            use_running_average=False,
            axis=axis,
            epsilon=eps,
        )
        assert rel_err(y, x64) < 1e-13


@pytest.mark.parametrize("value", [3.0, 7.3])
@pytest.mark.parametrize("shape,axis", [((16, 4), -1), ((4, 3, 5, 5), 1)])
def test_constant_feature_gives_finite_outputs(shape, axis, value):
    """Zero variance: finite outputs and gradients; the feature comes out as its beta."""
    c, eps = 1, 1e-5  # feature 1 is constant
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    const = (slice(None), c)
    x[const] = value
    x = jnp.asarray(x)
    fshape = feature_shape(shape, axis)
    scale = jnp.full(fshape, 1.5)
    bias = jnp.arange(fshape[0], dtype=jnp.float32)

    def loss(x, scale, bias):
        y, _, v = train_bn(x, scale, bias, axis=axis, epsilon=eps)
        return jnp.sum(jnp.sin(y)), (y, v)

    (_, (y, v)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, scale, bias)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(v))
    for g in grads:
        assert np.all(np.isfinite(g))
    y_c = np.asarray(y)[const]
    if value == 3.0:  # sums of 3.0 are exact in float32: x - mean == 0, y == beta
        np.testing.assert_array_equal(y_c, float(bias[c]))
        assert float(v[c]) == pytest.approx(0.99, abs=1e-7)  # running var -> 0.99 * 1 + 0.01 * 0
    else:
        # the float32 mean of n copies of 7.3 may be off by up to ~n ulp; scale / sqrt(eps)
        # amplifies that, so y is beta only to this bound (flax behaves the same)
        n = x.size // fshape[0]
        atol = n * float(np.spacing(np.float32(value))) * 1.5 / np.sqrt(eps)
        np.testing.assert_allclose(y_c, float(bias[c]), rtol=0, atol=atol)


def test_one_value_per_feature_returns_the_bias_as_flax():
    """A batch of one (dense) or a 1x1 map of batch one: the batch variance is 0 and
    train-mode BN returns beta, as flax does (the trainer, not the layer, refuses such
    a setup; values_per_feature counts what a statistic sees)."""
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(1.0, 0.3, 5), jnp.float32)
    b = jnp.asarray(rng.normal(0.0, 0.3, 5), jnp.float32)
    for shape in [(1, 5), (1, 1, 1, 5)]:
        x = jnp.asarray(rng.normal(2.0, 3.0, shape), jnp.float32)
        assert values_per_feature(shape) == 1
        y, m, v = train_bn(x, s, b, momentum=0.5)
        np.testing.assert_array_equal(y, jnp.broadcast_to(b, shape))
        np.testing.assert_allclose(m, 0.5 * x.reshape(5), rtol=1e-6)
        np.testing.assert_allclose(v, jnp.full(5, 0.5), rtol=1e-6)  # 0.5 * 1 + 0.5 * 0
        variables = {"params": {"scale": s, "bias": b}, "batch_stats": {"mean": m, "var": v}}
        for module in (BatchNorm(), nn.BatchNorm()):
            y_mod, _ = module.apply(
                variables, x, use_running_average=False, mutable=["batch_stats"]
            )
            np.testing.assert_array_equal(y_mod, y)
            # init on such an input works, as flax's
            init = module.init(jax.random.key(0), jnp.ones(shape), use_running_average=False)
            assert init["params"]["scale"].shape == (5,)
    # eval mode needs no batch statistics
    y_eval = BatchNorm().apply(variables, jnp.ones((1, 5)), use_running_average=True)
    assert np.all(np.isfinite(y_eval))
    assert values_per_feature((8, 4, 4, 3)) == 128
    assert values_per_feature((8, 3, 4, 4), axis=1, ghost_batch_size=2) == 32


def test_feature_axis_zero_is_allowed_except_with_ghost_batches():
    """As in flax any axis may hold the features (axis 0: nothing is reduced there);
    ghost batches split axis 0, so there it is an error."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    mean, var = batch_stats(x, axis=0)
    np.testing.assert_allclose(mean, x.mean(1), rtol=1e-6)
    np.testing.assert_allclose(var, x.var(1), rtol=1e-5)
    with pytest.raises(ValueError, match="batch axis"):
        batch_stats(x, axis=0, ghost_batch_size=2)


def test_eval_mode_uses_and_keeps_the_running_averages():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    rm = jnp.asarray([0.5, -1.0, 2.0])
    rv = jnp.asarray([0.25, 4.0, 1.0])
    s, b = jnp.asarray([1.0, 2.0, 0.5]), jnp.asarray([0.0, 1.0, -1.0])
    y, m, v = batch_norm(x, s, b, rm, rv, use_running_average=True, epsilon=1e-3)
    assert m is rm and v is rv
    expected = (np.asarray(x) - rm) / np.sqrt(np.asarray(rv) + 1e-3) * s + b
    assert rel_err(y, expected) < 1e-6


def test_no_norm_is_the_identity():
    x = jnp.arange(6.0).reshape(2, 3)
    variables = NoNorm().init(jax.random.key(0), x)
    assert not variables
    np.testing.assert_array_equal(NoNorm().apply(variables, x, use_running_average=False), x)
    assert BatchNorm.normalizes and not NoNorm.normalizes


# --------------------------------------------------------------------------------------
# Conv layout, ghost batches, sync BN
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv_bn_equals_dense_bn_over_reshaped_input(layout):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, (4, 5, 6, 3)), jnp.float32)  # NHWC
    s = jnp.asarray(rng.normal(1.0, 0.3, 3), jnp.float32)
    b = jnp.asarray(rng.normal(0.0, 0.3, 3), jnp.float32)
    rm, rv = jnp.asarray([0.1, 0.2, 0.3]), jnp.asarray([1.0, 2.0, 3.0])
    kw = dict(momentum=0.8, epsilon=1e-4)
    flat = x.reshape(-1, 3)
    y_dense, m_dense, v_dense = batch_norm(flat, s, b, rm, rv, use_running_average=False, **kw)
    ye_dense, _, _ = batch_norm(flat, s, b, rm, rv, use_running_average=True, **kw)
    if layout == "NHWC":
        xin, axis, back = x, -1, lambda y: y
    else:
        xin, axis, back = x.transpose(0, 3, 1, 2), 1, lambda y: y.transpose(0, 2, 3, 1)
    y, m, v = batch_norm(xin, s, b, rm, rv, use_running_average=False, axis=axis, **kw)
    assert rel_err(back(y).reshape(-1, 3), y_dense) < 1e-6
    assert rel_err(m, m_dense) < 1e-6 and rel_err(v, v_dense) < 1e-6
    ye, _, _ = batch_norm(xin, s, b, rm, rv, use_running_average=True, axis=axis, **kw)
    assert rel_err(back(ye).reshape(-1, 3), ye_dense) < 1e-6


@pytest.mark.parametrize(
    "shape,ghost", [((12, 4), 4), ((12, 4), 3), ((8, 3, 3, 2), 2), ((6, 4), 6)]
)
def test_ghost_batches_are_plain_bn_per_sub_batch(shape, ghost):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
    c = shape[-1]
    s = jnp.asarray(rng.normal(1.0, 0.3, c), jnp.float32)
    b = jnp.asarray(rng.normal(0.0, 0.3, c), jnp.float32)
    rm, rv = jnp.asarray(rng.normal(size=c), jnp.float32), jnp.full(c, 2.0)
    mom = 0.7
    y, m, v = batch_norm(
        x, s, b, rm, rv, use_running_average=False, momentum=mom, ghost_batch_size=ghost
    )
    parts = [
        batch_norm(x[i : i + ghost], s, b, rm, rv, use_running_average=False, momentum=mom)
        for i in range(0, shape[0], ghost)
    ]
    assert rel_err(y, jnp.concatenate([p[0] for p in parts])) < 1e-6
    # running stats: updated with the mean of the ghost statistics
    ghost_means = jnp.stack([batch_stats(x[i : i + ghost])[0] for i in range(0, shape[0], ghost)])
    ghost_vars = jnp.stack([batch_stats(x[i : i + ghost])[1] for i in range(0, shape[0], ghost)])
    assert rel_err(m, mom * rm + (1 - mom) * ghost_means.mean(0)) < 1e-6
    assert rel_err(v, mom * rv + (1 - mom) * ghost_vars.mean(0)) < 1e-6
    # ... which is also the mean of the per-sub-batch running-stat updates
    assert rel_err(m, jnp.stack([p[1] for p in parts]).mean(0)) < 1e-6
    # the module takes the same switch
    y_mod, _ = BatchNorm(momentum=mom, ghost_batch_size=ghost).apply(
        {"params": {"scale": s, "bias": b}, "batch_stats": {"mean": rm, "var": rv}},
        x,
        use_running_average=False,
        mutable=["batch_stats"],
    )
    assert rel_err(y_mod, y) < 1e-6


@pytest.mark.parametrize("ghost", [5, 0, 7])
def test_ghost_size_must_divide_the_batch(ghost):
    x = jnp.ones((12, 3))
    p = jnp.ones(3)
    with pytest.raises(ValueError, match="must divide the batch size 12"):
        batch_norm(x, p, p, p, p, use_running_average=False, ghost_batch_size=ghost)


def test_ghost_size_one_gives_one_value_per_statistic():
    """Ghost batches of one example (dense): every statistic sees one value, so the
    output is beta, the degenerate case the trainer refuses up front."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    assert values_per_feature(x.shape, ghost_batch_size=1) == 1
    b = jnp.asarray([0.5, -1.0, 2.0])
    y, m, _ = train_bn(x, jnp.ones(3), b, ghost_batch_size=1, momentum=0.0)
    np.testing.assert_array_equal(y, jnp.broadcast_to(b, x.shape))
    np.testing.assert_allclose(m, x.mean(0), rtol=1e-6)


def test_sync_bn_over_a_named_axis_equals_bn_over_the_whole_batch():
    """``axis_name`` (here a vmap axis standing for devices) averages the statistics."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, (2, 8, 3)), jnp.float32)  # (devices, batch, C)
    s, b = jnp.full(3, 1.5), jnp.full(3, 0.5)
    rm, rv = jnp.zeros(3), jnp.ones(3)
    y, m, v = jax.vmap(
        lambda xi: batch_norm(xi, s, b, rm, rv, use_running_average=False, axis_name="dev"),
        axis_name="dev",
    )(x)
    y_all, m_all, v_all = batch_norm(x.reshape(16, 3), s, b, rm, rv, use_running_average=False)
    assert rel_err(y.reshape(16, 3), y_all) < 1e-6
    for d in range(2):
        assert rel_err(m[d], m_all) < 1e-6 and rel_err(v[d], v_all) < 1e-6
