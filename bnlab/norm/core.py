"""The pure batch-norm functions under every bnlab BN module (conventions: :mod:`bnlab.norm`).

Nothing here holds state: :func:`batch_norm` maps (x, scale, bias, running mean/var,
flags) to (y, new running mean/var), and the linen and NNX modules only fetch and
store what it reads and returns.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Axes = int | Sequence[int]


def feature_axes(axis: Axes, ndim: int) -> tuple[int, ...]:
    """``axis`` as the sorted, distinct, non-negative feature axes of a rank-``ndim`` input.

    As in flax, an axis named twice (``(1, 1)``, or ``-1`` and ``ndim - 1``) is one axis.
    An axis outside ``[-ndim, ndim)`` raises ``IndexError``, the error flax raises (flax
    lets ``[-2 ndim, -ndim)`` wrap onto another axis; bnlab raises there too).
    """
    axes = tuple(axis) if isinstance(axis, Iterable) else (axis,)
    out = set()
    for a in map(operator.index, axes):
        if not -ndim <= a < ndim:
            raise IndexError(
                f"tuple index out of range: feature axis {a} of an input of rank {ndim}"
            )
        out.add(a % ndim)
    return tuple(sorted(out))


def _reduction_dtype(x_dtype: Any, dtype: Any, force_float32_reductions: bool) -> Any:
    """Statistics are taken in ``dtype`` (default: x's), promoted to at least float32
    unless ``force_float32_reductions=False`` (flax's rule; complex and float64 stay)."""
    dt = x_dtype if dtype is None else dtype
    return jnp.promote_types(dt, jnp.float32) if force_float32_reductions else jnp.dtype(dt)


def result_dtype(*args: Array | None, dtype: Any = None) -> Any:
    """The output dtype: ``dtype``, else the promotion of the non-None ``args`` lifted to a
    float (integer input with no scale or bias comes out float32), as flax infers it."""
    if dtype is None:
        dtype = jnp.result_type(*(a for a in args if a is not None))
        if not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(jnp.float32, dtype)
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.inexact):
        raise ValueError(f"Dtype must be inexact: {dtype}")
    return dtype


def _abs_sq(x: Array) -> Array:
    """``|x|^2`` elementwise, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return lax.square(lax.real(x)) + lax.square(lax.imag(x))
    return lax.square(x)


def _ghost_view(x: Array, mask: Array | None, feat: tuple[int, ...], ghost_batch_size: int):
    """``x`` (and its mask) as ``(groups, ghost_batch_size, ...)``, feature axes shifted."""
    if 0 in feat:
        raise ValueError("ghost batches split axis 0, the batch axis: it cannot be a feature axis")
    n = x.shape[0]
    if ghost_batch_size < 1 or n % ghost_batch_size:
        raise ValueError(
            f"ghost_batch_size={ghost_batch_size} must divide the batch size {n}; "
            "choose a divisor of the batch size"
        )
    shape = (n // ghost_batch_size, ghost_batch_size) + x.shape[1:]
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape).reshape(shape)
    return x.reshape(shape), mask, tuple(a + 1 for a in feat)


def values_per_feature(
    shape: Sequence[int], *, axis: Axes = -1, ghost_batch_size: int | None = None
) -> int:
    """How many values each train-mode statistic is taken over (per ghost batch, if any).

    Below 2 the batch variance is 0 and train-mode BN returns its bias (beta) whatever
    the input, as flax does; a trainer can refuse such a setup before it starts.
    """
    feat = feature_axes(axis, len(shape))
    sizes = [s for a, s in enumerate(shape) if a not in feat]
    if ghost_batch_size is not None and 0 not in feat and sizes:
        sizes[0] = min(sizes[0], ghost_batch_size)
    count = 1
    for s in sizes:
        count *= s
    return count


def batch_stats(
    x: Array,
    *,
    axis: Axes = -1,
    ghost_batch_size: int | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    mask: Array | None = None,
    use_fast_variance: bool = False,
    dtype: Any = None,
    force_float32_reductions: bool = True,
) -> tuple[Array, Array]:
    """Per-feature batch mean and biased variance of ``x`` (real for complex ``x``).

    Computed in ``dtype`` (default x's) promoted to at least float32, unless
    ``force_float32_reductions=False``. The variance is two-pass,
    ``mean(|x - mean|^2)``, or with ``use_fast_variance`` flax's one-pass
    ``max(0, mean(|x|^2) - |mean|^2)``. ``mask`` (broadcastable to ``x``, True where a
    value counts) restricts both to the masked values; with ``axis_name`` the
    per-device statistics are averaged with equal weights, as in flax. With
    ``ghost_batch_size`` the result has a leading ghost-group axis of length
    ``N // ghost_batch_size``; otherwise it has the feature shape.
    """
    x = jnp.asarray(x)
    feat = feature_axes(axis, x.ndim)
    xs = x.astype(_reduction_dtype(x.dtype, dtype, force_float32_reductions))
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
    keep = feat
    if ghost_batch_size is not None:
        xs, mask, feat = _ghost_view(xs, mask, feat, ghost_batch_size)
        keep = (0,) + feat  # one statistic per ghost group
    reduce = tuple(a for a in range(xs.ndim) if a not in keep)

    def mean(v: Array) -> Array:
        return jnp.mean(v, axis=reduce, keepdims=True, where=mask)

    def sync(*vs: Array) -> tuple[Array, ...]:
        if axis_name is None:
            return vs
        return lax.pmean(vs, axis_name, axis_index_groups=axis_index_groups)

    if use_fast_variance:
        mu, mu2 = sync(mean(xs), mean(_abs_sq(xs)))
        var = jnp.maximum(0.0, mu2 - _abs_sq(mu))
    else:
        (mu,) = sync(mean(xs))
        (var,) = sync(mean(_abs_sq(xs - mu)))
    return jnp.squeeze(mu, reduce), jnp.squeeze(var, reduce)


def _broadcast(v: Array, x_ndim: int, feat: tuple[int, ...]) -> Array:
    """Reshape a feature-shaped array (with any leading group axes) to broadcast against x."""
    lead = v.ndim - len(feat)
    shape = [1] * (x_ndim - lead)
    for a, s in zip(feat, v.shape[lead:], strict=True):
        shape[a - lead] = s
    return v.reshape(v.shape[:lead] + tuple(shape))


def batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    running_mean: Array,
    running_var: Array,
    *,
    use_running_average: bool,
    axis: Axes = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    stats_grad: bool = True,
    ghost_batch_size: int | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    dtype: Any = None,
    center_only: bool = False,
    mask: Array | None = None,
    use_fast_variance: bool = False,
    force_float32_reductions: bool = True,
) -> tuple[Array, Array, Array]:
    """Normalize ``x`` and return ``(y, new_running_mean, new_running_var)``.

    In eval mode (``use_running_average=True``) the running averages are used and
    returned unchanged (``mask`` and ``ghost_batch_size`` play no part). ``scale``/
    ``bias`` of ``None`` mean no learned gamma/beta. ``center_only``: subtract the mean
    only (the variance is still tracked). The other arguments are
    :func:`batch_stats`'s. The output dtype is ``dtype``, else inferred from x, scale
    and bias (:func:`result_dtype`).
    """
    x = jnp.asarray(x)
    shape = x.shape
    feat = feature_axes(axis, x.ndim)
    out_dtype = result_dtype(x, scale, bias, dtype=dtype)
    if use_running_average:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    else:
        mean, var = batch_stats(
            x,
            axis=feat,
            ghost_batch_size=ghost_batch_size,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            mask=mask,
            use_fast_variance=use_fast_variance,
            dtype=dtype,
            force_float32_reductions=force_float32_reductions,
        )
        if not stats_grad:
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        if ghost_batch_size is not None:  # stats are (groups, C); running stats get their mean
            batch_mean, batch_var = mean.mean(0), var.mean(0)
        else:
            batch_mean, batch_var = mean, var
        new_mean = momentum * running_mean + (1.0 - momentum) * lax.stop_gradient(batch_mean)
        new_var = momentum * running_var + (1.0 - momentum) * lax.stop_gradient(batch_var)
        if ghost_batch_size is not None:
            x, _, feat = _ghost_view(x, None, feat, ghost_batch_size)  # x as (groups, ghost, ...)
    # flax's order of operations; each promotes its operands (x - mean is >= float32
    # whenever the statistics are)
    y = x - _broadcast(mean, x.ndim, feat)
    mul = None if center_only else lax.rsqrt(_broadcast(var, x.ndim, feat) + epsilon)
    if scale is not None:
        s = _broadcast(scale, x.ndim, feat)
        mul = s if mul is None else mul * s
    if mul is not None:
        y = y * mul
    if bias is not None:
        y = y + _broadcast(bias, x.ndim, feat)
    return jnp.asarray(y.reshape(shape), out_dtype), new_mean, new_var


# the settings a BN layer (linen or NNX) passes to batch_norm as they are, by name
LAYER_SETTINGS = ("momentum", "epsilon", "stats_grad", "ghost_batch_size", "axis_index_groups",
                  "dtype", "center_only", "use_fast_variance")  # fmt: skip


def layer_settings(layer: Any) -> dict[str, Any]:
    """:data:`LAYER_SETTINGS` of a BN layer, as :func:`batch_norm`'s keyword arguments."""
    return {k: getattr(layer, k) for k in LAYER_SETTINGS}


def noise_params(key: Array, shape: tuple[int, ...], noise_mean: float, noise_std: float):
    """One step's noise distribution per feature: ``(mu_s, sd_s, mu_a, sd_a)``, each of
    ``shape`` (see :mod:`bnlab.norm`): scale noise N(mu_s, sd_s^2), shift N(mu_a, sd_a^2)."""
    k = jax.random.split(key, 4)
    u = lambda kk, lo, hi: jax.random.uniform(kk, shape, jnp.float32, lo, hi)  # noqa: E731
    m, s = float(noise_mean), float(noise_std)
    return u(k[0], 1.0 - m, 1.0 + m), u(k[1], 0.0, s), u(k[2], -m, m), u(k[3], 0.0, s)


def inject_noise(
    y: Array, key: Array, *, axis: Axes = -1, noise_mean: float, noise_std: float,
    noise_axis: str | None = None,
) -> Array:  # fmt: skip
    """Noisy BN's perturbation of a BN output ``y``: ``y * scale + shift`` with i.i.d.
    per-example, per-activation noise from this key's distribution (:func:`noise_params`).
    The noise is real (for complex ``y`` too). ``noise_axis``: inside ``shard_map`` over
    that axis, ``y`` is this device's slice (along axis 0) of a global batch; the noise
    is drawn for the global batch and sliced, so it equals the single-device noise."""
    feat = feature_axes(axis, y.ndim)
    shape = tuple(y.shape[a] for a in feat)
    k_params, k_scale, k_shift = jax.random.split(key, 3)
    mu_s, sd_s, mu_a, sd_a = (
        _broadcast(p, y.ndim, feat) for p in noise_params(k_params, shape, noise_mean, noise_std)
    )
    ys = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    real = jnp.finfo(ys.dtype).dtype

    def flat_normal(k: Array, shape: tuple[int, ...]) -> Array:
        # drawn flat and reshaped: JAX's (partitionable) threefry gives the same values,
        # and XLA:CPU compiles a rank-4 draw ~10x slower (seconds per conv layer)
        return jax.random.normal(k, (math.prod(shape),), real).reshape(shape)

    def normal(k: Array) -> Array:
        if noise_axis is None:
            return flat_normal(k, y.shape)
        n = y.shape[0]
        whole = flat_normal(k, (n * lax.axis_size(noise_axis),) + y.shape[1:])
        return lax.dynamic_slice_in_dim(whole, lax.axis_index(noise_axis) * n, n, axis=0)

    scale = mu_s + sd_s * normal(k_scale)
    shift = mu_a + sd_a * normal(k_shift)
    return (ys * scale + shift).astype(y.dtype)


def torch_momentum(momentum: float) -> float:
    """PyTorch's momentum for a Flax momentum (and back): ``1 - momentum``."""
    return 1.0 - momentum


def unbiased_var(var: Array, n: int) -> Array:
    """PyTorch's stored running variance convention: ``n / (n - 1) * biased_var``."""
    return var * (n / (n - 1))


def biased_var(var: Array, n: int) -> Array:
    """Inverse of :func:`unbiased_var`: ``(n - 1) / n * unbiased_var`` (Flax's convention).

    ``biased_var(1.0, n)`` is where to start bnlab's running variance to track a
    PyTorch ``BatchNorm`` (whose running variance starts at 1) step by step.
    """
    return var * ((n - 1) / n)
