"""Per-layer statistics of activations and parameters (pure functions, jit-able).

Percentiles are exact and equal to ``np.percentile`` (linear interpolation), but
found without sorting: a three-pass radix select over an order-preserving 32-bit
key of each float32 value (a 2,048-bin histogram per pass). On CPU this costs a few
histogram passes instead of a full sort, which would dominate a training step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


_DIGITS = (11, 11, 10)  # bits per radix pass, high to low; sums to 32


def order_statistics(x: Array, ranks: Array) -> Array:
    """The ``ranks``-th smallest values (0-based) of ``x`` (flattened), exactly.

    Radix select: per pass, one histogram over the elements whose higher digits
    match a target's prefix (one scatter for all targets), then a cumulative count
    picks each target's next digit.
    """
    u = _ordered_key(x.ravel())
    ranks = jnp.asarray(ranks, jnp.int32)
    n_t = ranks.shape[0]
    prefix = jnp.zeros(n_t, jnp.uint32)
    rank = ranks
    done = 0
    for width in _DIGITS:
        bins = 1 << width
        shift = 32 - done - width
        digit = ((u >> shift) & (bins - 1)).astype(jnp.int32)
        if done == 0:
            hist = jnp.zeros(bins, jnp.int32).at[digit].add(1)
            hists = jnp.broadcast_to(hist, (n_t, bins))
        else:
            high = u >> (32 - done)
            match = high[None, :] == prefix[:, None]  # (T, n)
            owner = jnp.argmax(match, axis=0)  # first target whose prefix matches
            hit = jnp.any(match, axis=0).astype(jnp.int32)
            flat = jnp.zeros(n_t * bins, jnp.int32).at[owner * bins + digit].add(hit)
            first = jnp.argmax(prefix[None, :] == prefix[:, None], axis=1)  # dedupe prefixes
            hists = flat.reshape(n_t, bins)[first]
        cum = jnp.cumsum(hists, axis=1)
        d = jnp.sum(cum <= rank[:, None], axis=1)  # first bin whose count passes the rank
        rank = rank - (jnp.take_along_axis(cum, d[:, None], 1)[:, 0] - hists[jnp.arange(n_t), d])
        prefix = (prefix << width) | d.astype(jnp.uint32)
        done += width
    return _from_key(prefix)


def percentiles(x: Array, qs: Sequence[float]) -> Array:
    """``np.percentile(x, qs)`` (linear interpolation) over all elements, sort-free."""
    n = x.size
    pos = [q / 100.0 * (n - 1) for q in qs]  # static: exact in float64
    k = [int(p) for p in pos]
    frac = jnp.asarray([p - i for p, i in zip(pos, k, strict=True)], jnp.float32)
    vals = order_statistics(x, jnp.asarray(k + [min(i + 1, n - 1) for i in k]))
    a, b = vals[: len(qs)], vals[len(qs) :]
    # NumPy's lerp: exact at both ends, monotone in frac
    return jnp.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)


def _batched_percentiles(arrays: Sequence[Array], qs: Sequence[float]) -> list[Array]:
    """Percentiles of each array; arrays of one size share one vmapped computation."""
    out: list[Array | None] = [None] * len(arrays)
    by_size: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        by_size.setdefault(a.size, []).append(i)
    for idx in by_size.values():
        stacked = jnp.stack([arrays[i].reshape(-1) for i in idx])
        res = jax.vmap(lambda v: percentiles(v, qs))(stacked)
        for row, i in enumerate(idx):
            out[i] = res[row]
    return out  # type: ignore[return-value]


def activation_stats(
    sites: Mapping[str, Array], qs: Sequence[float], units: Sequence[int]
) -> dict[str, dict[str, Array]]:
    """Statistics of every activation site, pooled and for tracked units.

    ``{'layer1/pre': {'mean', 'std', 'p15', ..., 'u0/mean', 'u0/std', 'u0/p15', ...}}``:
    pooled over every value of the probe batch, and for each tracked unit j (a
    feature map for conv sites, pooled over examples and space) over its values.
    Units beyond a site's width are skipped.
    """
    groups: list[tuple[str, str, Array]] = []  # (site, stat prefix, values)
    for name, h in sites.items():
        h = h.astype(jnp.float32)
        groups.append((name, "", h))
        groups.extend((name, f"u{j}/", h[..., j]) for j in units if j < h.shape[-1])
    pcts = _batched_percentiles([g[2] for g in groups], qs)
    out: dict[str, dict[str, Array]] = {name: {} for name in sites}
    for (name, prefix, h), p in zip(groups, pcts, strict=True):
        out[name][f"{prefix}mean"] = jnp.mean(h)
        out[name][f"{prefix}std"] = jnp.std(h)
        out[name].update({f"{prefix}p{q:g}": p[i] for i, q in enumerate(qs)})
    return out


def _sq(tree) -> Array:
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def layer_stats(
    params: Mapping, grads: Mapping, batch_stats: Mapping, layers: Sequence[str]
) -> dict[str, dict[str, Array]]:
    """Per hidden layer: weight and gradient norms, gamma/beta and running-stat summaries.

    Keys: ``weight_norm`` and ``grad_norm`` (of the linear map's kernel),
    ``gamma_mean``, ``gamma_std``, ``beta_mean``, ``beta_std`` where the norm learns
    them, ``bias_mean``/``bias_std`` of the linear map's bias, and
    ``running_mean_mean``, ``running_mean_std``, ``running_var_mean``,
    ``running_var_std`` where the norm keeps running statistics.
    """
    out: dict[str, dict[str, Array]] = {}
    for layer in layers:
        p, g = params[layer], grads[layer]
        d = {
            "weight_norm": jnp.sqrt(_sq(p["linear"]["kernel"])),
            "grad_norm": jnp.sqrt(_sq(g["linear"]["kernel"])),
        }
        if "bias" in p["linear"]:
            d["bias_mean"] = jnp.mean(p["linear"]["bias"])
            d["bias_std"] = jnp.std(p["linear"]["bias"])
        norm = p.get("norm", {})
        for key, name in (("scale", "gamma"), ("bias", "beta")):
            if key in norm:
                d[f"{name}_mean"] = jnp.mean(norm[key])
                d[f"{name}_std"] = jnp.std(norm[key])
        bs = batch_stats.get(layer, {}).get("norm", {})
        for key in ("mean", "var"):
            if key in bs:
                d[f"running_{key}_mean"] = jnp.mean(bs[key])
                d[f"running_{key}_std"] = jnp.std(bs[key])
        out[layer] = d
    return out
