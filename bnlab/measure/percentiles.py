"""Exact percentiles of large arrays without sorting them (pure functions, jit-able).

Percentiles are exact and equal to ``np.percentile`` (linear interpolation), but
found without sorting the large sites: a two-pass radix select over an
order-preserving 32-bit key of each float32 value (a 65,536-bin histogram per pass).
On CPU this costs a few passes over the values instead of a full sort, which would
dominate a training step. Small groups (a tracked unit's values) are sorted, which
is cheaper than the histograms there; and a site that is a monotone function of
another (``post = sigmoid(pre)``) reads its percentiles through that site's order
statistics instead of searching again.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


def _ordered_key(x: Array) -> Array:
    """Map float32 to uint32 so that unsigned order equals float order."""
    i = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    sign = i >> 31
    return jnp.where(sign == 1, ~i, i | jnp.uint32(0x80000000))


def _from_key(u: Array) -> Array:
    sign = u >> 31
    i = jnp.where(sign == 1, u & jnp.uint32(0x7FFFFFFF), ~u)
    return lax.bitcast_convert_type(i, jnp.float32)


_BITS = 16  # two radix passes of 16 bits
_BLOCK = 256  # cumulative counts are searched per block of 256 bins, then inside one


def _cumsum(x: Array) -> Array:
    """Cumulative sums along the last axis (length 256) in two levels of 16: XLA:CPU
    runs a cumulative sum as a reduce-window, quadratic in the axis' length."""
    parts = x.reshape(x.shape[:-1] + (16, 16))
    inner = jnp.cumsum(parts, axis=-1)
    before = jnp.cumsum(inner[..., -1], axis=-1) - inner[..., -1]
    return (inner + before[..., None]).reshape(x.shape)


def _search(hist: Array, ranks: Array) -> tuple[Array, Array]:
    """Per rank: the first bin of ``hist`` (2**16,) whose cumulative count exceeds it,
    and the rank inside that bin. Block sums first (one cumulative sum of 256 for
    every rank), then one block's 256 bins per rank: a cumulative sum over 65,536 bins
    is slow on CPU."""
    blocks = hist.reshape(_BLOCK, -1)
    sums = blocks.sum(-1)
    csum = _cumsum(sums)
    blk = jnp.sum(csum[None, :] <= ranks[:, None], axis=1)
    return _inside(blocks[blk], blk, ranks - (csum[blk] - sums[blk]))


def _inside(rows: Array, blk: Array, ranks: Array) -> tuple[Array, Array]:
    """The bin within each rank's block ``rows`` (T, 256) and the rank left in it."""
    t = jnp.arange(rows.shape[0])
    inner = _cumsum(rows)
    j = jnp.sum(inner <= ranks[:, None], axis=1)
    return blk * rows.shape[1] + j, ranks - (inner[t, j] - rows[t, j])


def _search_rows(hists: Array, ranks: Array) -> tuple[Array, Array]:
    """:func:`_search` with a histogram per rank (``hists``: (T, 2**16))."""
    t = jnp.arange(hists.shape[0])
    blocks = hists.reshape(hists.shape[0], _BLOCK, -1)
    sums = blocks.sum(-1)
    csum = _cumsum(sums)
    blk = jnp.sum(csum <= ranks[:, None], axis=1)
    return _inside(blocks[t, blk], blk, ranks - (csum[t, blk] - sums[t, blk]))


def order_statistics(x: Array, ranks: Array) -> Array:
    """The ``ranks``-th smallest values (0-based) of ``x`` (flattened), exactly.

    Radix select in two passes over 16-bit digits of the order-preserving key: a
    histogram of the high digits picks each target's bin, then one histogram of the
    low digits of the elements in those bins (one scatter for all targets: each
    element counts for the first target whose bin holds it, found by a chain of
    selects, not a variadic argmax, which is a slow reduction on CPU).
    """
    u = _ordered_key(x.ravel())
    ranks = jnp.asarray(ranks, jnp.int32)
    n_t, bins = ranks.shape[0], 1 << _BITS
    hi = (u >> _BITS).astype(jnp.int32)
    lo = (u & (bins - 1)).astype(jnp.int32)
    b, r = _search(jnp.zeros(bins, jnp.int32).at[hi].add(1), ranks)
    owner = jnp.full(hi.shape, n_t, jnp.int32)  # n_t: in no target's bin (a spare row)
    for t in reversed(range(n_t)):
        owner = jnp.where(hi == b[t], t, owner)
    flat = jnp.zeros((n_t + 1) * bins, jnp.int32).at[owner * bins + lo].add(1)
    first = jnp.argmax(b[None, :] == b[:, None], axis=1)  # targets sharing a bin share its row
    b2, _ = _search_rows(flat[: n_t * bins].reshape(n_t, bins)[first], r)
    return _from_key((b.astype(jnp.uint32) << _BITS) | b2.astype(jnp.uint32))


_SORT_MAX = 4096  # up to this many values a sort is cheaper than the 65,536-bin histograms


def percentile_ranks(n: int, qs: Sequence[float]) -> tuple[list[int], Array]:
    """np.percentile's positions: the lower ranks and the interpolation weights."""
    pos = [q / 100.0 * (n - 1) for q in qs]  # static: exact in float64
    k = [int(p) for p in pos]
    return k, jnp.asarray([p - i for p, i in zip(pos, k, strict=True)], jnp.float32)


def brackets(v: Array, qs: Sequence[float]) -> tuple[Array, Array]:
    """For each percentile in ``qs`` of the flat ``v``: its lower and upper order
    statistics (ranks k and k+1 of :func:`percentile_ranks`, the last value twice at
    the top), sorting small inputs and radix-selecting large ones (both ranks as
    targets of one select)."""
    n = v.size
    k = np.asarray(percentile_ranks(n, qs)[0])
    up = np.minimum(k + 1, n - 1)
    if n <= _SORT_MAX:
        s = jnp.sort(v)
        return s[jnp.asarray(k)], s[jnp.asarray(up)]
    both = order_statistics(v, jnp.asarray(np.concatenate([k, up])))
    return both[: len(k)], both[len(k) :]


def lerp(a: Array, b: Array, frac: Array) -> Array:
    """NumPy's percentile interpolation: exact at both ends, monotone in ``frac``."""
    return jnp.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)


def percentiles(x: Array, qs: Sequence[float], bracket: tuple | None = None) -> Array:
    """``np.percentile(x, qs)`` (linear interpolation) over all elements, exactly.
    ``bracket``: ``x``'s :func:`brackets`, where already found."""
    v = x.ravel().astype(jnp.float32)
    a, b = bracket if bracket is not None else brackets(v, qs)
    return lerp(a, b, percentile_ranks(v.size, qs)[1])


def percentiles_through(x: Array, y: Array, qs: Sequence[float],
                        bracket: tuple | None = None) -> Array:  # fmt: skip
    """``np.percentile(y, qs)`` where ``y = f(x)`` elementwise for a non-decreasing ``f``
    (an activation of its pre-activation): f keeps order, so y's order statistics are
    the values of ``y`` where ``x`` holds its own, and only ``x`` is searched (or not at
    all: ``bracket``, ``x``'s :func:`brackets`, where already found)."""
    v, w = x.ravel().astype(jnp.float32), y.ravel().astype(jnp.float32)
    a, b = bracket if bracket is not None else brackets(v, qs)
    # y where x equals each order statistic (the same value wherever it does): a masked
    # max, since a variadic argmax is a slow reduction on CPU
    ab = jnp.concatenate([a, b])
    at = jnp.max(jnp.where(v[None, :] == ab[:, None], w[None, :], -jnp.inf), axis=1)
    return lerp(at[: len(qs)], at[len(qs) :], percentile_ranks(v.size, qs)[1])
