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


def _find_bin(hist: Array, rank: Array) -> tuple[Array, Array]:
    """Per row of ``hist`` (T, 2**16): the first bin whose cumulative count exceeds
    ``rank``, and the rank inside that bin. Two small cumulative sums instead of one
    over 65,536 bins (slow on CPU)."""
    t = jnp.arange(hist.shape[0])
    blocks = hist.reshape(hist.shape[0], _BLOCK, -1)
    sums = blocks.sum(-1)
    csum = jnp.cumsum(sums, axis=1)
    blk = jnp.sum(csum <= rank[:, None], axis=1)
    rank = rank - (csum[t, blk] - sums[t, blk])
    inner = jnp.cumsum(blocks[t, blk], axis=1)
    j = jnp.sum(inner <= rank[:, None], axis=1)
    rank = rank - (inner[t, j] - blocks[t, blk, j])
    return blk * blocks.shape[-1] + j, rank


def order_statistics(x: Array, ranks: Array) -> Array:
    """The ``ranks``-th smallest values (0-based) of ``x`` (flattened), exactly.

    Radix select in two passes over 16-bit digits of the order-preserving key: a
    histogram of the high digits picks each target's bin, then one histogram of the
    low digits of the elements in those bins (one scatter for all targets).
    """
    u = _ordered_key(x.ravel())
    ranks = jnp.asarray(ranks, jnp.int32)
    n_t, bins = ranks.shape[0], 1 << _BITS
    hi = (u >> _BITS).astype(jnp.int32)
    lo = (u & (bins - 1)).astype(jnp.int32)
    h1 = jnp.zeros(bins, jnp.int32).at[hi].add(1)
    b, r = _find_bin(jnp.broadcast_to(h1, (n_t, bins)), ranks)
    match = hi[None, :] == b[:, None]  # (T, n)
    owner = jnp.argmax(match, axis=0)  # the first target whose bin holds the element
    hit = jnp.any(match, axis=0).astype(jnp.int32)
    flat = jnp.zeros(n_t * bins, jnp.int32).at[owner * bins + lo].add(hit)
    first = jnp.argmax(b[None, :] == b[:, None], axis=1)  # targets sharing a bin share its row
    b2, _ = _find_bin(flat.reshape(n_t, bins)[first], r)
    return _from_key((b.astype(jnp.uint32) << _BITS) | b2.astype(jnp.uint32))


_SORT_MAX = 4096  # up to this many values a sort is cheaper than the 65,536-bin histograms


def percentile_ranks(n: int, qs: Sequence[float]) -> tuple[list[int], Array]:
    """np.percentile's positions: the lower ranks and the interpolation weights."""
    pos = [q / 100.0 * (n - 1) for q in qs]  # static: exact in float64
    k = [int(p) for p in pos]
    return k, jnp.asarray([p - i for p, i in zip(pos, k, strict=True)], jnp.float32)


def _bracket(v: Array, k: Sequence[int]) -> tuple[Array, Array]:
    """The ``k``-th and ``k+1``-th smallest values of the flat ``v`` (the last value
    twice at the top), sorting small inputs and radix-selecting large ones."""
    n = v.size
    if n <= _SORT_MAX:
        s = jnp.sort(v)
        return s[jnp.asarray(k)], s[jnp.minimum(jnp.asarray(k) + 1, n - 1)]
    a = order_statistics(v, jnp.asarray(k))
    # the next order statistic: a itself if it is repeated past rank k, else the
    # smallest value above it (one compare pass instead of a second radix target)
    upto = jnp.sum(v[None, :] <= a[:, None], axis=1)
    above = jnp.min(jnp.where(v[None, :] > a[:, None], v[None, :], jnp.inf), axis=1)
    b = jnp.where(upto >= jnp.asarray(k) + 2, a, jnp.where(jnp.isinf(above), a, above))
    return a, b


def lerp(a: Array, b: Array, frac: Array) -> Array:
    """NumPy's percentile interpolation: exact at both ends, monotone in ``frac``."""
    return jnp.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)


def percentiles(x: Array, qs: Sequence[float]) -> Array:
    """``np.percentile(x, qs)`` (linear interpolation) over all elements, exactly."""
    v = x.ravel().astype(jnp.float32)
    k, frac = percentile_ranks(v.size, qs)
    return lerp(*_bracket(v, k), frac)


def percentiles_through(x: Array, y: Array, qs: Sequence[float]) -> Array:
    """``np.percentile(y, qs)`` where ``y = f(x)`` elementwise for a non-decreasing ``f``
    (an activation of its pre-activation): f keeps order, so y's order statistics are
    the values of ``y`` where ``x`` holds its own, and only ``x`` is searched."""
    v, w = x.ravel().astype(jnp.float32), y.ravel().astype(jnp.float32)
    k, frac = percentile_ranks(v.size, qs)
    a, b = _bracket(v, k)
    # y where x equals each order statistic (the same value wherever it does): a masked
    # max, since a variadic argmax is a slow reduction on CPU
    at = lambda t: jnp.max(jnp.where(v[None, :] == t[:, None], w[None, :], -jnp.inf), axis=1)  # noqa: E731
    return lerp(at(a), at(b), frac)
