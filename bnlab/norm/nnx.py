"""bnlab's NNX BatchNorm, a drop-in for ``flax.nnx.BatchNorm``, and NoNorm.

Also reachable as ``bnlab.norm.NNXBatchNorm`` / ``bnlab.norm.NNXNoNorm``. Both wrap
:func:`bnlab.norm.core.batch_norm`; the conventions are in :mod:`bnlab.norm`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes as nnx_dtypes

from bnlab.norm.core import Axes, batch_norm, feature_axes, inject_noise, layer_settings

Array = jax.Array
NoiseKey = jax.Array | nnx.Rngs | nnx.RngStream
_ZEROS, _ONES = nnx.initializers.zeros_init(), nnx.initializers.ones_init()  # flax's defaults

_NO_MODE = (
    "No `use_running_average` given to bnlab's NNX BatchNorm: pass it to the constructor, "
    "to the call, or set it with model.train() / model.eval() / nnx.view(model, "
    "use_running_average=...)"
)


def _noise_key(noise_key: NoiseKey | None) -> Array:
    """A key from ``noise_key``: a key array as is; an ``nnx.Rngs`` gives its ``noise``
    stream's next key (``default`` if it has no ``noise`` stream); an RngStream its next."""
    if noise_key is None:
        raise ValueError(
            "noisy BN (noise_mean/noise_std > 0) needs a per-step key in train mode: "
            "call it with noise_key=key, or noise_key=nnx.Rngs(noise=key) shared by the layers"
        )
    if isinstance(noise_key, nnx.Rngs):
        return noise_key.noise()
    if isinstance(noise_key, nnx.RngStream):
        return noise_key()
    return noise_key


class BatchNorm(nnx.Module):
    """Drop-in for ``flax.nnx.BatchNorm`` built on :func:`~bnlab.norm.core.batch_norm`.

    The constructor takes flax 0.12's arguments with flax's meaning (``num_features``
    positional, the rest keyword-only, ``rngs`` required), except that
    ``use_fast_variance`` defaults to ``False`` (bnlab's two-pass variance, as the linen
    module) and ``num_features`` may be a tuple, one size per feature axis, for a tuple
    ``axis``. bnlab's switches follow, keyword-only: ``stats_grad``,
    ``ghost_batch_size``, ``center_only``, ``noise_mean``, ``noise_std``, ``noise_axis``
    (inside ``shard_map``: the axis a batch is split over, so noisy BN draws the global
    batch's noise and takes this device's slice, as the linen module).

    State: ``mean`` and ``var`` (``nnx.BatchStat``, float32) and ``scale``/``bias``
    (``nnx.Param``, ``param_dtype``, or None), the names and layout of flax's, so one
    can replace the other in a model. ``use_running_average`` is taken from the call,
    else from the attribute (set by the constructor, ``model.train()``/``eval()`` or
    ``nnx.view``). Inputs, statistics and parameters are promoted with
    ``promote_dtype`` as flax does, so the numerics are ``flax.nnx.BatchNorm``'s, with
    one exception: for complex input the running mean turns complex, as in linen
    (``flax.nnx.BatchNorm`` writes it into its float32 array, dropping the imaginary
    part with a warning that future JAX versions turn into an error).

    Noisy BN takes its key at call time, ``noise_key=`` (train mode only): a key array,
    or an ``nnx.Rngs`` whose ``noise`` stream each noisy layer draws from in turn. The
    module stores no key, so a training step stays a pure function of the keys passed
    in; build ``nnx.Rngs(noise=step_key)`` inside the step from the run's key and the
    step so every layer gets its own key, redrawn every step.
    """

    normalizes = True  # models sow the pre-norm site only for norms that normalize

    def __init__(
        self,
        num_features: int | Sequence[int],
        *,
        use_running_average: bool | None = False,
        axis: Axes = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable = _ZEROS,
        scale_init: Callable = _ONES,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = False,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
        stats_grad: bool = True,
        ghost_batch_size: int | None = None,
        center_only: bool = False,
        noise_mean: float = 0.0,
        noise_std: float = 0.0,
        noise_axis: str | None = None,
    ):
        shape = tuple(num_features) if isinstance(num_features, Iterable) else (num_features,)
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
        self.scale: nnx.Param | None
        self.bias: nnx.Param | None
        if use_scale:
            self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata)
        else:
            self.scale = nnx.data(None)
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
        else:
            self.bias = nnx.data(None)
        self.num_features = num_features if isinstance(num_features, int) else shape
        self.use_running_average = use_running_average
        self.axis = tuple(axis) if isinstance(axis, Iterable) else axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.stats_grad = stats_grad
        self.ghost_batch_size = ghost_batch_size
        self.center_only = center_only
        self.noise_mean = noise_mean
        self.noise_std = noise_std
        self.noise_axis = noise_axis  # inside shard_map: the axis the batch is split over

    @property
    def noisy(self) -> bool:
        return bool(self.noise_mean or self.noise_std)

    def __call__(
        self,
        x: Array,
        use_running_average: bool | None = None,
        *,
        mask: Array | None = None,
        noise_key: NoiseKey | None = None,
    ) -> Array:
        """Normalize ``x``; in train mode update ``mean``/``var`` in place.

        ``mask`` (broadcastable to ``x``): take the statistics over the masked values
        only. ``noise_key``: noisy BN's key (see the class docstring).
        """
        use_ra = first_from(use_running_average, self.use_running_average, error_msg=_NO_MODE)
        x = jnp.asarray(x)
        feat = feature_axes(self.axis, x.ndim)
        fshape = tuple(x.shape[a] for a in feat)
        if fshape != self.mean.shape:
            raise ValueError(
                f"input of shape {x.shape} has features {fshape} on axis {self.axis}, "
                f"but this BatchNorm was built for num_features={self.num_features}"
            )
        scale = None if self.scale is None else self.scale[...]
        bias = None if self.bias is None else self.bias[...]
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype
        )
        if not use_ra:  # flax: the update starts from the stored (unpromoted) statistics
            mean, var = self.mean[...], self.var[...]
        y, new_mean, new_var = batch_norm(
            x, scale, bias, mean, var, use_running_average=use_ra, axis=feat,
            axis_name=self.axis_name, mask=mask, **layer_settings(self),
        )  # fmt: skip
        if use_ra:
            return y
        key = _noise_key(noise_key) if self.noisy else None  # refuse before any update
        if jnp.iscomplexobj(new_mean):  # keep it complex, as linen (flax.nnx drops .imag)
            self.mean.set_value(new_mean)
        else:
            self.mean[...] = new_mean
        self.var[...] = new_var
        if key is not None:
            y = inject_noise(
                y, key, axis=feat,
                noise_mean=self.noise_mean, noise_std=self.noise_std,
                noise_axis=self.noise_axis,
            )  # fmt: skip
        return y

    def set_view(self, use_running_average: bool | None = None):
        """What ``nnx.view(model, use_running_average=...)`` sets on this layer.

        Args:
          use_running_average: True normalizes with the running statistics (eval),
            False with the batch's (train); None leaves the mode as it is.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


class NoNorm(nnx.Module):
    """The "no normalization" choice: returns its input; takes BN's constructor
    (``num_features``, ``rngs``) and call signature, so a model can build either."""

    normalizes = False

    def __init__(self, num_features: int | Sequence[int] | None = None, *, rngs: Any = None):
        pass

    def __call__(
        self,
        x: Array,
        use_running_average: bool | None = None,
        *,
        mask: Array | None = None,
        noise_key: NoiseKey | None = None,
    ) -> Array:
        return x
