"""bnlab's linen LayerNorm, RMSNorm, GroupNorm and Batch Renorm, with BN's call
signature (``norm(name=...)(x, use_running_average=...)``) so any model that takes a
norm factory takes them, and so they can stand in for a hard-coded
``flax.linen.BatchNorm`` (:func:`forward` with that module's variables).

Parameters are Flax's (``scale``, ``bias`` in ``params``; Batch Renorm also keeps
``mean``, ``var`` and its step counter ``steps`` in ``batch_stats``). The numerics are
:mod:`bnlab.norm.variants`'s; with the same axes each equals Flax's own module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnlab.norm.core import Axes, feature_axes
from bnlab.norm.variants import batch_renorm, group_norm, layer_norm, renorm_limits

Array = jax.Array


class _Norm(nn.Module):
    """Fields shared by the variants (the rest are keyword-only, per class)."""

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable = nn.initializers.zeros
    scale_init: Callable = nn.initializers.ones

    normalizes = True
    noisy = False

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        return forward(self, self, x, bool(use_running_average))


class LayerNorm(_Norm):
    """LayerNorm over ``reduction_axes`` (None: every axis but the batch axis), scale and
    bias along ``feature_axes``; ``use_fast_variance`` as Flax (one pass)."""

    _: dataclasses.KW_ONLY
    reduction_axes: Axes | None = None
    feature_axes: Axes = -1
    use_fast_variance: bool = True


class RMSNorm(_Norm):
    """RMSNorm (no centering, no bias), axes as :class:`LayerNorm`."""

    _: dataclasses.KW_ONLY
    reduction_axes: Axes | None = None
    feature_axes: Axes = -1
    use_bias: bool = False


class GroupNorm(_Norm):
    """GroupNorm with ``groups`` groups of consecutive channels (channels last)."""

    _: dataclasses.KW_ONLY
    groups: int = 32
    use_fast_variance: bool = True


class BatchRenorm(_Norm):
    """Batch Renormalization (Ioffe 2017) with the paper's warm-up of ``r_max``/``d_max``;
    the step counter ``steps`` lives in ``batch_stats`` beside ``mean``/``var``."""

    epsilon: float = 1e-5
    _: dataclasses.KW_ONLY
    axis: Axes = -1
    momentum: float = 0.99
    r_max: float = 3.0
    d_max: float = 5.0
    warmup: int = 5000
    r_max_steps: int = 40000
    d_max_steps: int = 25000
    axis_name: str | None = None


def _params(s: _Norm, m: nn.Module, shape: tuple[int, ...]):
    scale = m.param("scale", s.scale_init, shape, s.param_dtype) if s.use_scale else None
    bias = m.param("bias", s.bias_init, shape, s.param_dtype) if s.use_bias else None
    return scale, bias


def forward(s: _Norm, m: nn.Module, x: Array, use_ra: bool) -> Array:
    """The variant ``s`` on ``x`` with the variables of ``m`` (``s`` itself, or a
    hard-coded ``flax.linen.BatchNorm`` it replaces: same variable names)."""
    x = jnp.asarray(x)
    if isinstance(s, BatchRenorm):
        return _renorm(s, m, x, use_ra)
    if isinstance(s, GroupNorm):
        scale, bias = _params(s, m, (x.shape[-1],))
        where = "/".join(m.path) or "the layer"
        return group_norm(x, scale, bias, groups=s.groups, epsilon=s.epsilon,
                          use_fast_variance=s.use_fast_variance, dtype=s.dtype, where=where)  # fmt: skip
    feat = feature_axes(s.feature_axes, x.ndim)
    scale, bias = _params(s, m, tuple(x.shape[a] for a in feat))
    rms = isinstance(s, RMSNorm)
    return layer_norm(x, scale, bias, reduce=s.reduction_axes, feat=feat, epsilon=s.epsilon,
                      use_fast_variance=False if rms else s.use_fast_variance, rms=rms,
                      dtype=s.dtype)  # fmt: skip


def _renorm(s: BatchRenorm, m: nn.Module, x: Array, use_ra: bool) -> Array:
    feat = feature_axes(s.axis, x.ndim)
    shape = tuple(x.shape[a] for a in feat)
    ra_mean = m.variable("batch_stats", "mean", lambda: jnp.zeros(shape, jnp.float32))
    ra_var = m.variable("batch_stats", "var", lambda: jnp.ones(shape, jnp.float32))
    steps = m.variable("batch_stats", "steps", lambda: jnp.zeros((), jnp.float32))
    scale, bias = _params(s, m, shape)
    r_max, d_max = renorm_limits(steps.value, r_max=s.r_max, d_max=s.d_max, warmup=s.warmup,
                                 r_max_steps=s.r_max_steps, d_max_steps=s.d_max_steps)  # fmt: skip
    init = m.is_initializing()
    y, new_mean, new_var = batch_renorm(
        x, scale, bias, ra_mean.value, ra_var.value, use_running_average=use_ra,
        r_max=r_max, d_max=d_max, axis=feat, momentum=s.momentum, epsilon=s.epsilon,
        axis_name=None if init else s.axis_name, dtype=s.dtype,
    )  # fmt: skip
    if not use_ra and not init:
        ra_mean.value, ra_var.value, steps.value = new_mean, new_var, steps.value + 1
    return y


VARIANTS = {"layer": LayerNorm, "rms": RMSNorm, "group": GroupNorm, "batch_renorm": BatchRenorm}
