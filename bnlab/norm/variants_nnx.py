"""bnlab's NNX LayerNorm, RMSNorm, GroupNorm and Batch Renorm: the NNX twins of
:mod:`bnlab.norm.variants_linen`, built as ``norm(num_features, rngs=rngs)`` and called
as BN is (``x, use_running_average=None``), so they can replace ``flax.nnx.BatchNorm``.

State has Flax's names: ``scale``/``bias`` (``nnx.Param`` or None); Batch Renorm also
``mean``, ``var`` and ``steps`` (``nnx.BatchStat``, float32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnlab.norm.core import Axes, feature_axes
from bnlab.norm.variants import batch_renorm, group_norm, layer_norm, renorm_limits

Array = jax.Array
_ZEROS, _ONES = nnx.initializers.zeros_init(), nnx.initializers.ones_init()


class _Norm(nnx.Module):
    normalizes = True
    noisy = False

    def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype: Any = None,
                 param_dtype: Any = jnp.float32, use_bias: bool = True, use_scale: bool = True,
                 bias_init: Callable = _ZEROS, scale_init: Callable = _ONES,
                 rngs: nnx.Rngs):  # fmt: skip
        shape = (num_features,)
        self.scale = (nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale
                      else nnx.data(None))  # fmt: skip
        self.bias = (nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias
                     else nnx.data(None))  # fmt: skip
        self.num_features, self.epsilon, self.dtype = num_features, epsilon, dtype
        self.use_bias, self.use_scale = use_bias, use_scale

    def _affine(self) -> tuple[Array | None, Array | None]:
        return (None if self.scale is None else self.scale[...],
                None if self.bias is None else self.bias[...])  # fmt: skip


class LayerNorm(_Norm):
    """LayerNorm over ``reduction_axes`` (None: every axis but the batch axis), scale and
    bias along the last axis."""

    def __init__(self, num_features: int, *, reduction_axes: Axes | None = None,
                 use_fast_variance: bool = True, **kw: Any):  # fmt: skip
        super().__init__(num_features, **kw)
        self.reduction_axes, self.use_fast_variance = reduction_axes, use_fast_variance

    def __call__(self, x: Array, use_running_average: bool | None = None, **_: Any) -> Array:
        return layer_norm(x, *self._affine(), reduce=self.reduction_axes, epsilon=self.epsilon,
                          use_fast_variance=self.use_fast_variance, dtype=self.dtype)  # fmt: skip


class RMSNorm(_Norm):
    """RMSNorm (no centering, no bias), axes as :class:`LayerNorm`."""

    def __init__(self, num_features: int, *, reduction_axes: Axes | None = None,
                 use_bias: bool = False, **kw: Any):  # fmt: skip
        super().__init__(num_features, use_bias=use_bias, **kw)
        self.reduction_axes = reduction_axes

    def __call__(self, x: Array, use_running_average: bool | None = None, **_: Any) -> Array:
        return layer_norm(x, *self._affine(), reduce=self.reduction_axes, epsilon=self.epsilon,
                          use_fast_variance=False, rms=True, dtype=self.dtype)  # fmt: skip


class GroupNorm(_Norm):
    """GroupNorm with ``groups`` groups of consecutive channels (channels last)."""

    def __init__(self, num_features: int, *, groups: int = 32, use_fast_variance: bool = True,
                 **kw: Any):  # fmt: skip
        super().__init__(num_features, **kw)
        self.groups, self.use_fast_variance = groups, use_fast_variance

    def __call__(self, x: Array, use_running_average: bool | None = None, **_: Any) -> Array:
        return group_norm(x, *self._affine(), groups=self.groups, epsilon=self.epsilon,
                          use_fast_variance=self.use_fast_variance, dtype=self.dtype)  # fmt: skip


class BatchRenorm(_Norm):
    """Batch Renormalization (Ioffe 2017) with the paper's warm-up; ``mean``, ``var``
    and the step counter ``steps`` are ``nnx.BatchStat``s, updated in train mode."""

    def __init__(self, num_features: int, *, use_running_average: bool | None = False,
                 axis: Axes = -1, momentum: float = 0.99, epsilon: float = 1e-5,
                 r_max: float = 3.0, d_max: float = 5.0, warmup: int = 5000,
                 r_max_steps: int = 40000, d_max_steps: int = 25000,
                 axis_name: str | None = None, **kw: Any):  # fmt: skip
        super().__init__(num_features, epsilon=epsilon, **kw)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.steps = nnx.BatchStat(jnp.zeros((), jnp.float32))
        self.use_running_average, self.axis, self.momentum = use_running_average, axis, momentum
        self.limits = dict(r_max=r_max, d_max=d_max, warmup=warmup, r_max_steps=r_max_steps,
                           d_max_steps=d_max_steps)  # fmt: skip
        self.axis_name = axis_name

    def __call__(self, x: Array, use_running_average: bool | None = None, **_: Any) -> Array:
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        r_max, d_max = renorm_limits(self.steps[...], **self.limits)
        y, new_mean, new_var = batch_renorm(
            x, *self._affine(), self.mean[...], self.var[...], use_running_average=bool(use_ra),
            r_max=r_max, d_max=d_max, axis=feature_axes(self.axis, jnp.ndim(x)),
            momentum=self.momentum, epsilon=self.epsilon, axis_name=self.axis_name,
            dtype=self.dtype,
        )  # fmt: skip
        if not use_ra:
            self.mean[...], self.var[...] = new_mean, new_var
            self.steps[...] = self.steps[...] + 1
        return y

    def set_view(self, use_running_average: bool | None = None):
        """What ``nnx.view(model, use_running_average=...)`` sets on this layer."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


VARIANTS = {"layer": LayerNorm, "rms": RMSNorm, "group": GroupNorm, "batch_renorm": BatchRenorm}
