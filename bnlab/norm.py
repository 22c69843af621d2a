"""Batch normalization as a pure function, and the Flax modules that wrap it.

Conventions (the one place they are written down):

- **Statistics** are taken over every axis but the feature axis/axes, so an NHWC
  conv input is normalized per feature map over (N, H, W) (Goodfellow et al. 8.7.1).
  The batch variance is the biased one, computed in two passes as
  ``mean((x - mean)**2)`` so it can never go negative (flax#1491). Reductions run in
  float32 (or wider) whatever the input dtype (in ``dtype`` when given, promoted to at
  least float32, as in Flax); the output is cast back.
- **Running averages** follow Flax: ``ra = momentum * ra + (1 - momentum) * batch``
  (default momentum 0.99) and the stored running variance is the *biased* batch
  variance. PyTorch's ``BatchNorm`` uses ``momentum_torch = 1 - momentum`` and stores
  the *unbiased* variance ``n / (n - 1) * var`` (n = elements per feature, N*H*W for
  conv); :func:`torch_momentum` and :func:`unbiased_var` convert. Both libraries start
  the running variance at 1, so the conversion must cover the start too: begin from
  ``biased_var(1, n)`` (PyTorch's initial 1 in Flax's convention) and then
  ``unbiased_var(running_var, n)`` equals PyTorch's ``running_var`` after every step;
  in eval mode PyTorch normalizes with that unbiased value, so pass it as
  ``running_var`` to reproduce PyTorch's eval output.
- **Eval mode** (``use_running_average=True``) normalizes with the running averages.
- **Study switches**: ``stats_grad=False`` stops the gradient through the batch mean
  and variance (Ioffe & Szegedy 2015, Sec. 2 ablation); ``ghost_batch_size`` takes the
  statistics over consecutive sub-batches of that size along axis 0 (Hoffer et al.
  2017), and the running averages are updated with the mean of the ghost statistics;
  ``axis_name`` averages the statistics across devices (sync BN), as in Flax;
  ``center_only=True`` subtracts the batch mean but does not divide by the batch std
  (the "mean-only" normalization of Ioffe & Szegedy 2015, Sec. 2).
- **Noisy BN** (Santurkar et al. 2018): :func:`inject_noise` multiplies and shifts each
  activation of each example, after BN, by i.i.d. Gaussian noise whose distribution
  parameters are drawn afresh from the key (every step: the trainer derives the key
  from the run's key and the step). Per feature, from magnitudes ``noise_mean`` (m)
  and ``noise_std`` (s)::

      scale ~ N(mu_s, sd_s^2), mu_s ~ U(1 - m, 1 + m), sd_s ~ U(0, s)
      shift ~ N(mu_a, sd_a^2), mu_a ~ U(-m, m),        sd_a ~ U(0, s)
      y_noisy = y * scale + shift

  so the noise has non-zero mean and non-unit variance and its distribution moves
  every step; m = s = 0 is plain BN. The :class:`BatchNorm` module draws the key from
  the ``noise`` rng stream (``apply(..., rngs={'noise': key})``) in train mode only;
  in eval mode (running averages) there is no noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Axes = int | Sequence[int]


def _feature_axes(axis: Axes, ndim: int) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _stat_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def batch_stats(
    x: Array,
    *,
    axis: Axes = -1,
    ghost_batch_size: int | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
) -> tuple[Array, Array]:
    """Per-feature batch mean and biased variance of ``x``, in float32 or wider.

    With ``ghost_batch_size`` the result has a leading ghost-group axis of length
    ``N // ghost_batch_size``; otherwise it has the feature shape.
    """
    feat = _feature_axes(axis, x.ndim)
    if 0 in feat:
        raise ValueError("the feature axis must not be the batch axis 0")
    xs = x.astype(_stat_dtype(x.dtype))
    if ghost_batch_size is not None:
        n = x.shape[0]
        if ghost_batch_size < 1 or n % ghost_batch_size:
            raise ValueError(
                f"ghost_batch_size={ghost_batch_size} must divide the batch size {n}; "
                "choose a divisor of the batch size"
            )
        xs = xs.reshape((n // ghost_batch_size, ghost_batch_size) + x.shape[1:])
        feat = tuple(a + 1 for a in feat)
        reduce = tuple(a for a in range(1, xs.ndim) if a not in feat)
    else:
        reduce = tuple(a for a in range(xs.ndim) if a not in feat)
    count = 1
    for a in reduce:
        count *= xs.shape[a]
    if count < 2 and axis_name is None:
        raise ValueError(
            f"batch norm in train mode needs at least 2 values per feature, got {count} "
            f"(input shape {x.shape}); use a larger batch or use_running_average=True"
        )
    mean = jnp.mean(xs, axis=reduce, keepdims=True)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name, axis_index_groups=axis_index_groups)
    var = jnp.mean(jnp.square(xs - mean), axis=reduce, keepdims=True)
    if axis_name is not None:
        var = lax.pmean(var, axis_name, axis_index_groups=axis_index_groups)
    return jnp.squeeze(mean, reduce), jnp.squeeze(var, reduce)


def _broadcast(v: Array, x_ndim: int, feat: tuple[int, ...]) -> Array:
    """Reshape a feature-shaped array so it broadcasts against ``x``."""
    shape = [1] * x_ndim
    for a, s in zip(feat, v.shape[-len(feat) :], strict=True):
        shape[a] = s
    return v.reshape(v.shape[: v.ndim - len(feat)] + tuple(shape[v.ndim - len(feat) :]))


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
) -> tuple[Array, Array, Array]:
    """Normalize ``x`` and return ``(y, new_running_mean, new_running_var)``.

    In eval mode (``use_running_average=True``) the running averages are used and
    returned unchanged. ``scale``/``bias`` of ``None`` mean no learned gamma/beta.
    ``center_only``: subtract the mean only (the variance is still tracked).
    """
    feat = _feature_axes(axis, x.ndim)
    params = tuple(p for p in (scale, bias) if p is not None)
    out_dtype = dtype or jnp.result_type(x, *params)
    if use_running_average:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    else:
        # as flax: the statistics are taken in ``dtype`` when given (else x's), >= float32
        mean, var = batch_stats(
            x if dtype is None else x.astype(_stat_dtype(dtype)),
            axis=axis,
            ghost_batch_size=ghost_batch_size,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
        )
        if not stats_grad:
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        if ghost_batch_size is not None:  # stats are (groups, C); running stats get their mean
            batch_mean, batch_var = mean.mean(0), var.mean(0)
        else:
            batch_mean, batch_var = mean, var
        new_mean = momentum * running_mean + (1.0 - momentum) * lax.stop_gradient(batch_mean)
        new_var = momentum * running_var + (1.0 - momentum) * lax.stop_gradient(batch_var)
    # x in >= float32; every op below then promotes its operands' dtypes as flax does
    xs = x.astype(_stat_dtype(x.dtype))
    if not use_running_average and ghost_batch_size is not None:
        xs = xs.reshape((x.shape[0] // ghost_batch_size, ghost_batch_size) + x.shape[1:])
        feat = tuple(a + 1 for a in feat)  # view x as (groups, ghost, ...)
    if center_only:
        mul = jnp.ones((), xs.dtype)
    else:
        mul = lax.rsqrt(_broadcast(var, xs.ndim, feat) + epsilon)
    if scale is not None:
        mul = mul * _broadcast(scale, xs.ndim, feat)
    y = (xs - _broadcast(mean, xs.ndim, feat)) * mul
    if bias is not None:
        y = y + _broadcast(bias, xs.ndim, feat)
    return y.reshape(x.shape).astype(out_dtype), new_mean, new_var


def noise_params(key: Array, shape: tuple[int, ...], noise_mean: float, noise_std: float):
    """One step's noise distribution per feature: ``(mu_s, sd_s, mu_a, sd_a)``, each of
    ``shape`` (see the module docstring): scale noise N(mu_s, sd_s^2), shift N(mu_a, sd_a^2)."""
    k = jax.random.split(key, 4)
    u = lambda kk, lo, hi: jax.random.uniform(kk, shape, jnp.float32, lo, hi)  # noqa: E731
    m, s = float(noise_mean), float(noise_std)
    return u(k[0], 1.0 - m, 1.0 + m), u(k[1], 0.0, s), u(k[2], -m, m), u(k[3], 0.0, s)


def inject_noise(
    y: Array, key: Array, *, axis: Axes = -1, noise_mean: float, noise_std: float
) -> Array:
    """Noisy BN's perturbation of a BN output ``y``: ``y * scale + shift`` with i.i.d.
    per-example, per-activation noise from this key's distribution (:func:`noise_params`)."""
    feat = _feature_axes(axis, y.ndim)
    shape = tuple(y.shape[a] for a in feat)
    k_params, k_scale, k_shift = jax.random.split(key, 3)
    mu_s, sd_s, mu_a, sd_a = (
        _broadcast(p, y.ndim, feat) for p in noise_params(k_params, shape, noise_mean, noise_std)
    )
    ys = y.astype(_stat_dtype(y.dtype))
    scale = mu_s + sd_s * jax.random.normal(k_scale, y.shape, ys.dtype)
    shift = mu_a + sd_a * jax.random.normal(k_shift, y.shape, ys.dtype)
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


class BatchNorm(nn.Module):
    """Drop-in for ``flax.linen.BatchNorm`` built on :func:`batch_norm`.

    Running statistics live in the ``batch_stats`` collection as ``mean`` and
    ``var`` and are not updated during ``init``, as in Flax.
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
    stats_grad: bool = True
    ghost_batch_size: int | None = None
    center_only: bool = False
    noise_mean: float = 0.0  # noisy BN magnitudes (0, 0: no noise; see inject_noise)
    noise_std: float = 0.0

    normalizes = True  # models sow the pre-norm site only for norms that normalize

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        use_ra = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        feat = _feature_axes(self.axis, x.ndim)
        shape = tuple(x.shape[a] for a in feat)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, jnp.float32))
        scale = (
            self.param("scale", self.scale_init, shape, self.param_dtype)
            if self.use_scale
            else None
        )
        bias = (
            self.param("bias", self.bias_init, shape, self.param_dtype) if self.use_bias else None
        )
        y, new_mean, new_var = batch_norm(
            x,
            scale,
            bias,
            ra_mean.value,
            ra_var.value,
            use_running_average=use_ra,
            axis=self.axis,
            momentum=self.momentum,
            epsilon=self.epsilon,
            stats_grad=self.stats_grad,
            ghost_batch_size=self.ghost_batch_size,
            axis_name=None if self.is_initializing() else self.axis_name,
            axis_index_groups=self.axis_index_groups,
            dtype=self.dtype,
            center_only=self.center_only,
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
                    y, self.make_rng("noise"), axis=self.axis,
                    noise_mean=self.noise_mean, noise_std=self.noise_std,
                )  # fmt: skip
        return y

    @property
    def noisy(self) -> bool:
        return bool(self.noise_mean or self.noise_std)


class NoNorm(nn.Module):
    """The "no normalization" choice: returns its input, takes BN's call signature."""

    normalizes = False

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        return x
