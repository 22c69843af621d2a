"""Activation statistics of a probe batch per site: moments, percentiles, histograms.

Percentiles come from :mod:`bnlab.measure.percentiles` (exact, equal to
``np.percentile``); a conv site's are taken at fixed sampled positions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnlab.measure.percentiles import (
    _SORT_MAX,
    brackets,
    lerp,
    percentile_ranks,
    percentiles,
    percentiles_through,
)

Array = jax.Array


def sample_positions(shape: Sequence[int], sample: int | None, seed: int = 0) -> np.ndarray | None:
    """The fixed positions a conv site's percentiles are taken at: ``sample`` of its
    ``prod(shape[:-1])`` positions (example x height x width), drawn without replacement
    by ``numpy.random.default_rng([seed, positions, sample])`` and sorted, the same at
    every probe and for every site of that shape; None (every position) for a dense
    site, when ``sample`` is None or 0, or when the site has no more positions."""
    positions = int(np.prod(shape[:-1]))
    if len(shape) <= 2 or not sample or positions <= sample:
        return None
    rng = np.random.default_rng([seed, positions, sample])
    return np.sort(rng.choice(positions, size=sample, replace=False))


def activation_stats(
    sites: Mapping[str, Array],
    qs: Sequence[float],
    units: Sequence[int],
    derived: Mapping[str, str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    dead: Collection[str] = (),
) -> dict[str, dict[str, Array]]:
    """Statistics of every activation site, pooled and for tracked units.

    ``{'layer1/pre': {'mean', 'std', 'p15', ..., 'u0/mean', 'u0/std', 'u0/p15', ...}}``:
    pooled over every value of the probe batch, and for each tracked unit j (a
    feature map for conv sites, pooled over examples and space) over its values.
    Units beyond a site's width are skipped. ``derived`` maps a site to the site it
    is a non-decreasing elementwise function of (``models.activation_sources``): its
    pooled percentiles are then read through that site's (:func:`percentiles_through`).

    Conv sites (rank > 2) with more than ``sample`` positions: means and standard
    deviations stay exact over every value; percentiles, pooled and per unit, are
    exact over the values at ``sample`` fixed positions (:func:`sample_positions`):
    ``sample`` x channels values pooled, ``sample`` per unit.

    Sites in ``dead`` (an activation's output) also get ``dead_fraction``
    (:func:`dead_fraction`, over every value).
    """
    derived = derived or {}
    out: dict[str, dict[str, Array]] = {name: {} for name in sites}

    def put(name: str, prefix: str, mean: Array, std: Array, p: Array) -> None:
        out[name].update({f"{prefix}mean": mean, f"{prefix}std": std})
        out[name].update({f"{prefix}p{q:g}": p[i] for i, q in enumerate(qs)})

    picks = {name: sample_positions(h.shape, sample, seed) for name, h in sites.items()}

    def sampled(name: str) -> Array:
        h = sites[name].astype(jnp.float32)
        h = h.reshape((-1, h.shape[-1])) if h.ndim > 1 else h
        idx = picks[name]
        return h if idx is None else h[jnp.asarray(idx)]

    found: dict[str, tuple[Array, Array]] = {}

    def bracket(name: str) -> tuple[Array, Array]:  # a site's order statistics, searched once
        if name not in found:
            found[name] = brackets(sampled(name).ravel(), qs)
        return found[name]

    # pooled: site by site (vmapped over sites, the histogram scatters are slower on CPU)
    for name, h in sites.items():
        h = h.astype(jnp.float32)
        src = derived.get(name)
        hs = sampled(name)
        if src is None:
            p = percentiles(hs, qs, bracket(name))
        else:
            p = percentiles_through(sampled(src), hs, qs, bracket(src))
        put(name, "", jnp.mean(h), jnp.std(h), p)
        if name in dead:
            out[name]["dead_fraction"] = dead_fraction(h)
    # tracked units: small ones (a dense unit over the batch, a sampled conv unit) sorted
    # together in one op, large ones (a whole conv feature map) selected one by one
    small: dict[tuple[int, int], list[tuple[str, int, Array, Array]]] = {}
    for name, h in sites.items():
        for j in units:
            if j >= h.shape[-1]:
                continue
            g = h[..., j].ravel().astype(jnp.float32)
            gs = g if picks[name] is None else sampled(name)[:, j]
            if gs.size > _SORT_MAX:
                put(name, f"u{j}/", jnp.mean(g), jnp.std(g), percentiles(gs, qs))
            else:
                small.setdefault((gs.size, g.size), []).append((name, j, g, gs))
    for (n, _), groups in small.items():
        full = jnp.stack([v for _, _, v, _ in groups])
        s = jnp.sort(jnp.stack([v for _, _, _, v in groups]), axis=1)
        k, frac = percentile_ranks(n, qs)
        k = jnp.asarray(k)
        p = lerp(s[:, k], s[:, jnp.minimum(k + 1, n - 1)], frac)
        mean, std = jnp.mean(full, axis=1), jnp.std(full, axis=1)
        for i, (name, j, _, _) in enumerate(groups):
            put(name, f"u{j}/", mean[i], std[i], p[i])
    return out


def dead_fraction(h: Array) -> Array:
    """The fraction of ``h``'s units (its last axis: features, or a conv site's feature
    maps) that are exactly zero for every example (and position) of the batch: the dead
    units of a ReLU's output. 0 where no unit is zero throughout."""
    h = h.reshape((-1, h.shape[-1])) if h.ndim > 1 else h.reshape((-1, 1))
    return jnp.mean(jnp.all(h == 0, axis=0).astype(jnp.float32))


def histogram(x: Array, bins: int) -> dict[str, Array]:
    """A histogram of every value of ``x`` in ``bins`` equal buckets over [min, max],
    with what TensorBoard's histograms carry: ``min``, ``max``, ``num``, ``sum``,
    ``sum_sq`` and ``counts`` (bins,); the buckets' right edges are
    ``min + (max - min) * (1..bins) / bins``. Non-finite values are left out."""
    x = x.reshape(-1).astype(jnp.float32)
    ok = jnp.isfinite(x)
    lo = jnp.min(jnp.where(ok, x, jnp.inf))
    hi = jnp.max(jnp.where(ok, x, -jnp.inf))
    width = jnp.where(hi > lo, hi - lo, 1.0)
    idx = jnp.clip(jnp.floor((x - lo) / width * bins).astype(jnp.int32), 0, bins - 1)
    counts = jnp.zeros((bins,), jnp.float32).at[idx].add(ok.astype(jnp.float32))
    xs = jnp.where(ok, x, 0.0)
    return dict(min=lo, max=hi, num=ok.sum().astype(jnp.float32), sum=xs.sum(),
                sum_sq=(xs * xs).sum(), counts=counts)  # fmt: skip
