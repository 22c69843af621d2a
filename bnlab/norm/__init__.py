"""Batch normalization as a pure function, and the Flax modules (linen and NNX) that wrap it.

The normalizers beside BN (LayerNorm, RMSNorm, GroupNorm, Batch Renorm, Weight
Standardization) are in :mod:`bnlab.norm.variants` (pure) and
:mod:`bnlab.norm.variants_linen` / :mod:`bnlab.norm.variants_nnx` (modules).

Layout: :mod:`bnlab.norm.core` (the pure functions), :mod:`bnlab.norm.linen`
(``BatchNorm``, a drop-in for ``flax.linen.BatchNorm``, and ``NoNorm``) and
:mod:`bnlab.norm.nnx` (``BatchNorm``, a drop-in for ``flax.nnx.BatchNorm``, and
``NoNorm``), all re-exported here; the NNX pair as ``NNXBatchNorm`` and ``NNXNoNorm``.

Conventions (the one place they are written down):

- **Statistics** are taken over every axis but the feature axis/axes, so an NHWC
  conv input is normalized per feature map over (N, H, W) (Goodfellow et al. 8.7.1).
  The batch variance is the biased one. bnlab's default computes it in two passes as
  ``mean(|x - mean|^2)`` so it can never go negative or cancel (flax#1491);
  ``use_fast_variance=True`` gives flax's default one-pass
  ``max(0, mean(|x|^2) - |mean|^2)``. Reductions run in float32 (or wider) whatever
  the input dtype (in ``dtype`` when given, promoted to at least float32, as in Flax;
  ``force_float32_reductions=False`` skips the promotion, as in Flax); the output is
  cast to ``dtype``, else to the promotion of x, scale and bias, lifted to float32 for
  integer input. ``mask=`` (True where a value counts, broadcastable to x) restricts
  the statistics to the masked values; every value is still normalized. Complex input:
  complex mean, real variance ``mean(|x - mean|^2)``; the running mean turns complex,
  the running variance stays real (as Flax).
- **Axes**: ``axis`` may name an axis twice (one axis, as Flax); an axis out of range
  raises ``IndexError``. Any axis may be a feature axis, axis 0 too (no reduction
  there), except with ghost batches, which split axis 0.
- **Few values**: with one value per feature (a batch of 1 in a dense layer, or a
  1x1 map of batch 1) the batch variance is 0 and train mode returns the bias (beta),
  as Flax; :func:`values_per_feature` says how many values a statistic sees, for a
  trainer to refuse such a setup up front.
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
  ``axis_name`` averages the statistics across devices (sync BN), as in Flax (with a
  mask, each device's masked statistics count equally, as in Flax);
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
  every step; m = s = 0 is plain BN. In train mode only (no noise in eval mode), the
  linen :class:`BatchNorm` draws the key from the ``noise`` rng stream
  (``apply(..., rngs={'noise': key})``); :class:`NNXBatchNorm` takes it at call time
  (``noise_key=key``, or ``noise_key=nnx.Rngs(noise=key)`` to give each layer its own
  key), so no key lives in the model and a step is a function of explicit keys.
"""

from bnlab.norm import core, linen, nnx, variants, variants_linen, variants_nnx
from bnlab.norm.core import (
    batch_norm,
    batch_stats,
    biased_var,
    feature_axes,
    inject_noise,
    noise_params,
    result_dtype,
    torch_momentum,
    unbiased_var,
    values_per_feature,
)
from bnlab.norm.linen import BatchNorm, NoNorm
from bnlab.norm.nnx import BatchNorm as NNXBatchNorm
from bnlab.norm.nnx import NoNorm as NNXNoNorm

__all__ = [
    "BatchNorm",
    "NNXBatchNorm",
    "NNXNoNorm",
    "NoNorm",
    "batch_norm",
    "batch_stats",
    "biased_var",
    "core",
    "feature_axes",
    "inject_noise",
    "linen",
    "nnx",
    "noise_params",
    "result_dtype",
    "torch_momentum",
    "unbiased_var",
    "values_per_feature",
    "variants",
    "variants_linen",
    "variants_nnx",
]
