"""bnlab's linen BatchNorm, a drop-in for ``flax.linen.BatchNorm``, and NoNorm.

Both wrap :func:`bnlab.norm.core.batch_norm`; the conventions are in :mod:`bnlab.norm`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnlab.norm.core import Axes, batch_norm, feature_axes, inject_noise

Array = jax.Array


class BatchNorm(nn.Module):
    """Drop-in for ``flax.linen.BatchNorm`` built on :func:`~bnlab.norm.core.batch_norm`.

    The positional fields are flax 0.12's, in flax's order, up to and including
    ``use_fast_variance`` and ``force_float32_reductions``, with flax's meaning, except
    that ``use_fast_variance`` defaults to ``False``: bnlab's default is the two-pass
    variance ``mean(|x - mean|^2)``, which cannot cancel catastrophically (flax#1491;
    pass ``use_fast_variance=True`` for flax's one-pass form and default numerics).
    bnlab's own switches are keyword-only: ``stats_grad``, ``ghost_batch_size``,
    ``center_only``, ``noise_mean``, ``noise_std`` (see :mod:`bnlab.norm`).

    Running statistics live in the ``batch_stats`` collection as ``mean`` and ``var``
    (float32, or ``param_dtype`` with ``force_float32_reductions=False``) and are not
    updated during ``init``, where ``axis_name`` is ignored too, as in flax. Call with
    ``mask=`` (broadcastable to ``x``) to take the statistics over the masked values.
    Noisy BN draws its key from the ``noise`` rng stream
    (``apply(..., rngs={'noise': key})``), in train mode only.
    """

    use_running_average: bool | None = None
    axis: Axes = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable = nn.initializers.zeros
    scale_init: Callable = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = False  # flax: True; see the class docstring
    force_float32_reductions: bool = True
    _: dataclasses.KW_ONLY
    stats_grad: bool = True
    ghost_batch_size: int | None = None
    center_only: bool = False
    noise_mean: float = 0.0  # noisy BN magnitudes (0, 0: no noise; see inject_noise)
    noise_std: float = 0.0
    noise_axis: str | None = None  # inside shard_map: the axis the batch is split over

    normalizes = True  # models sow the pre-norm site only for norms that normalize

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        use_ra = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        feat = feature_axes(self.axis, x.ndim)
        shape = tuple(x.shape[a] for a in feat)
        f32 = self.force_float32_reductions
        stat_dtype = jnp.float32 if f32 else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, stat_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, stat_dtype))
        scale = (
            self.param("scale", self.scale_init, shape, self.param_dtype)
            if self.use_scale
            else None
        )
        bias = (
            self.param("bias", self.bias_init, shape, self.param_dtype) if self.use_bias else None
        )
        mean, var = ra_mean.value, ra_var.value
        if not f32:  # flax: parameters, and the running stats in eval mode, in param_dtype
            cast = lambda v: None if v is None else jnp.asarray(v, self.param_dtype)  # noqa: E731
            scale, bias = cast(scale), cast(bias)
            if use_ra:
                mean, var = cast(mean), cast(var)
        y, new_mean, new_var = batch_norm(
            x,
            scale,
            bias,
            mean,
            var,
            use_running_average=use_ra,
            axis=feat,
            momentum=self.momentum,
            epsilon=self.epsilon,
            stats_grad=self.stats_grad,
            ghost_batch_size=self.ghost_batch_size,
            axis_name=None if self.is_initializing() else self.axis_name,
            axis_index_groups=self.axis_index_groups,
            dtype=self.dtype,
            center_only=self.center_only,
            mask=mask,
            use_fast_variance=self.use_fast_variance,
            force_float32_reductions=f32,
        )
        if not use_ra and not self.is_initializing():
            ra_mean.value, ra_var.value = new_mean, new_var
            if self.noisy:
                if not self.has_rng("noise"):
                    raise ValueError(
                        "noisy BN (norm.noise_mean/noise_std > 0) needs a per-step key in "
                        "train mode: apply(..., rngs={'noise': key})"
                    )
                y = inject_noise(
                    y, self.make_rng("noise"), axis=feat,
                    noise_mean=self.noise_mean, noise_std=self.noise_std,
                    noise_axis=self.noise_axis,
                )  # fmt: skip
        return y

    @property
    def noisy(self) -> bool:
        return bool(self.noise_mean or self.noise_std)


class NoNorm(nn.Module):
    """The "no normalization" choice: returns its input, takes BN's call signature."""

    normalizes = False

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        return x
