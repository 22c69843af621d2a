"""Which training examples make batch t: the one rule (:func:`batch_indices`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bnlab.errors import UserError

Array = jax.Array


def epoch_permutation(key: Array, epoch: int | Array, n: int) -> Array:
    """The order of the ``n`` training examples in ``epoch``: fresh each epoch."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def _take(
    perm: Array,
    step: Array,
    steps_per_epoch: int,
    batch_size: int,
    offset: Array | int = 0,
    size: int | None = None,
) -> Array:
    """Batch ``step``'s slice of its epoch's permutation; ``offset``/``size``: one
    device's share of it."""
    start = (step % steps_per_epoch) * batch_size + offset
    return lax.dynamic_slice(perm, (start,), (size or batch_size,))


def batch_indices(key: Array, step: int | Array, n: int, batch_size: int) -> Array:
    """Indices of training batch ``step``: without replacement within each epoch.

    ``steps_per_epoch = n // batch_size`` (the last partial batch is dropped); step s
    takes slice ``s % steps_per_epoch`` of ``epoch_permutation(key, s // steps_per_epoch)``.
    """
    if not 1 <= batch_size <= n:
        raise UserError(f"batch_size={batch_size} does not fit a training set of {n} examples")
    spe = n // batch_size
    step = jnp.asarray(step)
    return _take(epoch_permutation(key, step // spe, n), step, spe, batch_size)
