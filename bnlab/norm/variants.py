"""The normalizers beside BN as pure functions: LayerNorm, RMSNorm, GroupNorm, Batch
Renormalization, and Weight Standardization of conv kernels.

Each maps arrays to arrays, no state; the linen and NNX modules
(:mod:`bnlab.norm.variants_linen`, :mod:`bnlab.norm.variants_nnx`) fetch and store what
these read and return. Conventions:

- **Axes.** ``reduce`` names the axes a statistic is taken over, ``feat`` the axes the
  learned scale/bias run along. LayerNorm and RMSNorm in bnlab reduce over every axis
  but the batch axis (Ba et al. 2016: all the hidden units of a layer, and for a conv
  layer its feature maps; Flax's default reduces over the last axis only) with one
  scale/bias per channel; GroupNorm (Wu & He 2018) reduces, per example, over the
  spatial axes and the channels of each of ``groups`` groups of consecutive channels.
- **Numerics** are Flax's: statistics in float32 (or wider), the variance biased, one
  pass ``max(0, E[x^2] - E[x]^2)`` with ``use_fast_variance`` (Flax's default for these
  layers) else two-pass; ``y = (x - mean) * rsqrt(var + eps) * scale + bias``.
- **Batch Renormalization** (Ioffe 2017, Algorithm 1), per feature, with running
  ``mu`` and ``sigma = sqrt(running_var + eps)``::

      r = stop_gradient(clip(sigma_B / sigma, 1 / r_max, r_max))
      d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
      y = scale * ((x - mu_B) / sigma_B * r + d) + bias,   sigma_B = sqrt(var_B + eps)

  and the running mean/variance are updated as BN's (Flax's momentum convention).
  Inference normalizes with the running averages, as BN. ``r_max = 1, d_max = 0`` is
  BN. The paper's warm-up (:func:`renorm_limits`): ``r_max = 1, d_max = 0`` for the
  first ``warmup`` steps, then relaxed linearly to reach ``r_max`` at step
  ``r_max_steps`` and ``d_max`` at ``d_max_steps`` (5000, 40k, 25k in the paper).
- **Weight Standardization** (Qiao et al. 2019): every conv kernel (a ``kernel`` of
  rank >= 3, Flax's ``(..., in, out)`` layout) is used as
  ``(w - mean(w)) / sqrt(var(w) + eps)``, the statistics per output channel over the
  other axes, inside the forward pass so the gradient goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bnlab.norm.core import Axes, _broadcast, batch_stats, feature_axes, result_dtype

Array = jax.Array


class NormFitError(ValueError):
    """A normalizer that cannot fit a layer (GroupNorm's groups not dividing its
    channels): the trainer turns it into one ``bnlab: error:`` line at start."""


def reduce_axes(axes: Axes | None, ndim: int) -> tuple[int, ...]:
    """``axes`` as sorted non-negative axes; ``None``: every axis but the batch axis 0."""
    return tuple(range(1, ndim)) if axes is None else feature_axes(axes, ndim)


def _stats(x: Array, reduce: tuple[int, ...], fast: bool, dtype: Any, center: bool = True):
    """Mean (0 without ``center``) and biased variance over ``reduce``, keepdims, >= f32."""
    xs = x.astype(jnp.promote_types(x.dtype if dtype is None else dtype, jnp.float32))
    if not center:
        return jnp.zeros((), xs.dtype), jnp.mean(lax.square(xs), reduce, keepdims=True)
    mu = jnp.mean(xs, reduce, keepdims=True)
    if fast:
        var = jnp.maximum(0.0, jnp.mean(lax.square(xs), reduce, keepdims=True) - lax.square(mu))
    else:
        var = jnp.mean(lax.square(xs - mu), reduce, keepdims=True)
    return mu, var


def _affine(y: Array, scale: Array | None, bias: Array | None, ndim: int, feat) -> Array:
    if scale is not None:
        y = y * _broadcast(scale, ndim, feat)
    if bias is not None:
        y = y + _broadcast(bias, ndim, feat)
    return y


def layer_norm(x: Array, scale: Array | None, bias: Array | None, *, reduce: Axes | None = None,
               feat: Axes = -1, epsilon: float = 1e-6, use_fast_variance: bool = True,
               rms: bool = False, dtype: Any = None) -> Array:  # fmt: skip
    """LayerNorm of ``x`` over ``reduce`` (None: every axis but 0); ``rms``: RMSNorm
    (no centering: ``x * rsqrt(mean(x^2) + eps) * scale``, Zhang & Sennrich 2019)."""
    x = jnp.asarray(x)
    red, ft = reduce_axes(reduce, x.ndim), feature_axes(feat, x.ndim)
    mu, var = _stats(x, red, use_fast_variance, dtype, center=not rms)
    y = (x - mu) * lax.rsqrt(var + epsilon)
    return jnp.asarray(
        _affine(y, scale, bias, x.ndim, ft), result_dtype(x, scale, bias, dtype=dtype)
    )


def group_norm(x: Array, scale: Array | None, bias: Array | None, *, groups: int,
               epsilon: float = 1e-6, use_fast_variance: bool = True,
               dtype: Any = None, where: str = "this layer") -> Array:  # fmt: skip
    """GroupNorm of channels-last ``x``: per example, statistics over the non-batch
    axes within each of ``groups`` groups of consecutive channels (Wu & He 2018)."""
    x = jnp.asarray(x)
    c = x.shape[-1]
    if groups < 1 or c % groups:
        raise NormFitError(
            f"norm.groups={groups} does not divide the {c} channels of {where}: choose "
            "norm.groups dividing every normalized layer's width"
        )
    xg = x.reshape(x.shape[:-1] + (groups, c // groups))
    red = tuple(a for a in range(1, xg.ndim) if a != xg.ndim - 2)
    mu, var = _stats(xg, red, use_fast_variance, dtype)
    y = ((xg - mu) * lax.rsqrt(var + epsilon)).reshape(x.shape)
    return jnp.asarray(_affine(y, scale, bias, x.ndim, (x.ndim - 1,)),
                       result_dtype(x, scale, bias, dtype=dtype))  # fmt: skip


def renorm_limits(step: Array, *, r_max: float, d_max: float, warmup: int, r_max_steps: int,
                  d_max_steps: int) -> tuple[Array, Array]:  # fmt: skip
    """``(r_max, d_max)`` at ``step`` under the paper's warm-up: ``(1, 0)`` up to
    ``warmup``, then linear to ``r_max`` at ``r_max_steps`` and ``d_max`` at ``d_max_steps``."""
    step = jnp.asarray(step, jnp.float32)

    def ramp(end: int) -> Array:
        if end <= warmup:
            return jnp.where(step >= warmup, 1.0, 0.0)
        return jnp.clip((step - warmup) / (end - warmup), 0.0, 1.0)

    return 1.0 + (r_max - 1.0) * ramp(r_max_steps), d_max * ramp(d_max_steps)


def batch_renorm(
    x: Array, scale: Array | None, bias: Array | None, running_mean: Array, running_var: Array,
    *, use_running_average: bool, r_max: Array | float, d_max: Array | float, axis: Axes = -1,
    momentum: float = 0.99, epsilon: float = 1e-5, axis_name: str | None = None,
    dtype: Any = None,
) -> tuple[Array, Array, Array]:  # fmt: skip
    """Batch Renormalization (Ioffe 2017): ``(y, new_running_mean, new_running_var)``.

    Eval mode normalizes with the running averages (as BN). Train mode corrects the
    batch statistics towards the running ones by ``r`` and ``d``, clipped to
    ``r_max``/``d_max`` and held constant in the gradient (module docstring)."""
    x = jnp.asarray(x)
    feat = feature_axes(axis, x.ndim)
    out_dtype = result_dtype(x, scale, bias, dtype=dtype)

    def b(v: Array) -> Array:
        return _broadcast(v, x.ndim, feat)

    if use_running_average:
        y = (x - b(running_mean)) * lax.rsqrt(b(running_var) + epsilon)
        return (
            jnp.asarray(_affine(y, scale, bias, x.ndim, feat), out_dtype),
            running_mean,
            running_var,
        )
    mu_b, var_b = batch_stats(x, axis=feat, axis_name=axis_name, dtype=dtype)
    sigma_b, sigma = jnp.sqrt(var_b + epsilon), jnp.sqrt(running_var + epsilon)
    r = lax.stop_gradient(jnp.clip(sigma_b / sigma, 1.0 / r_max, r_max))
    d = lax.stop_gradient(jnp.clip((mu_b - running_mean) / sigma, -d_max, d_max))
    y = (x - b(mu_b)) / b(sigma_b) * b(r) + b(d)
    new_mean = momentum * running_mean + (1.0 - momentum) * lax.stop_gradient(mu_b)
    new_var = momentum * running_var + (1.0 - momentum) * lax.stop_gradient(var_b)
    return jnp.asarray(_affine(y, scale, bias, x.ndim, feat), out_dtype), new_mean, new_var


def standardize_kernel(w: Array, epsilon: float = 1e-5) -> Array:
    """Weight Standardization of one kernel ``(..., in, out)``: per output channel."""
    red = tuple(range(w.ndim - 1))
    mu = jnp.mean(w, red, keepdims=True)
    var = jnp.mean(lax.square(w - mu), red, keepdims=True)
    return (w - mu) * lax.rsqrt(var + epsilon)


def standardize_weights(params: Any, epsilon: float = 1e-5, min_rank: int = 3) -> Any:
    """``params`` with every ``kernel`` of rank >= ``min_rank`` (conv kernels) standardized."""
    if isinstance(params, dict):
        return {k: standardize_kernel(v, epsilon)
                if k == "kernel" and hasattr(v, "ndim") and v.ndim >= min_rank
                else standardize_weights(v, epsilon, min_rank) for k, v in params.items()}  # fmt: skip
    return params


def per_feature_shape(x_shape: Sequence[int], feat: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x_shape[a] for a in feat)
