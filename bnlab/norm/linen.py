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

from bnlab.norm.core import Axes, batch_norm, feature_axes, inject_noise, layer_settings

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
        return forward(self, self, x, use_ra, mask)

    @property
    def noisy(self) -> bool:
        return bool(self.noise_mean or self.noise_std)


def forward(s: BatchNorm, m: nn.Module, x: Array, use_ra: bool, mask: Array | None) -> Array:
    """bnlab's BN of ``x`` with the settings of ``s`` and the variables of ``m``.

    ``m`` holds the state: its ``batch_stats`` ``mean``/``var``, its ``scale``/``bias``
    params, its ``noise`` rng. :class:`BatchNorm` passes itself as both; bnlab's
    substitution for a hard-coded ``flax.linen.BatchNorm`` passes that module as ``m``
    (same variable names) and a :class:`BatchNorm` of its settings as ``s``.
    """
    x = jnp.asarray(x)
    feat = feature_axes(s.axis, x.ndim)
    shape = tuple(x.shape[a] for a in feat)
    f32 = s.force_float32_reductions
    stat_dtype = jnp.float32 if f32 else s.param_dtype
    ra_mean = m.variable("batch_stats", "mean", lambda: jnp.zeros(shape, stat_dtype))
    ra_var = m.variable("batch_stats", "var", lambda: jnp.ones(shape, stat_dtype))
    scale = m.param("scale", s.scale_init, shape, s.param_dtype) if s.use_scale else None
    bias = m.param("bias", s.bias_init, shape, s.param_dtype) if s.use_bias else None
    mean, var = ra_mean.value, ra_var.value
    if not f32:  # flax: parameters, and the running stats in eval mode, in param_dtype
        cast = lambda v: None if v is None else jnp.asarray(v, s.param_dtype)  # noqa: E731
        scale, bias = cast(scale), cast(bias)
        if use_ra:
            mean, var = cast(mean), cast(var)
    y, new_mean, new_var = batch_norm(
        x, scale, bias, mean, var, use_running_average=use_ra, axis=feat,
        axis_name=None if m.is_initializing() else s.axis_name, mask=mask,
        force_float32_reductions=f32, **layer_settings(s),
    )  # fmt: skip
    if not use_ra and not m.is_initializing():
        ra_mean.value, ra_var.value = new_mean, new_var
        if s.noisy:
            if not m.has_rng("noise"):
                raise ValueError(
                    "noisy BN (norm.noise_mean/noise_std > 0) needs a per-step key in "
                    "train mode: apply(..., rngs={'noise': key})"
                )
            y = inject_noise(
                y, m.make_rng("noise"), axis=feat,
                noise_mean=s.noise_mean, noise_std=s.noise_std, noise_axis=s.noise_axis,
            )  # fmt: skip
    return y


class NoNorm(nn.Module):
    """The "no normalization" choice: returns its input, takes BN's call signature."""

    normalizes = False

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        return x
