"""Per-layer statistics of activations and parameters (pure functions, jit-able).

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

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
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


def _ranks(n: int, qs: Sequence[float]) -> tuple[list[int], Array]:
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


def _lerp(a: Array, b: Array, frac: Array) -> Array:
    """NumPy's percentile interpolation: exact at both ends, monotone in ``frac``."""
    return jnp.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)


def percentiles(x: Array, qs: Sequence[float]) -> Array:
    """``np.percentile(x, qs)`` (linear interpolation) over all elements, exactly."""
    v = x.ravel().astype(jnp.float32)
    k, frac = _ranks(v.size, qs)
    return _lerp(*_bracket(v, k), frac)


def percentiles_through(x: Array, y: Array, qs: Sequence[float]) -> Array:
    """``np.percentile(y, qs)`` where ``y = f(x)`` elementwise for a non-decreasing ``f``
    (an activation of its pre-activation): f keeps order, so y's order statistics are
    the values of ``y`` where ``x`` holds its own, and only ``x`` is searched."""
    v, w = x.ravel().astype(jnp.float32), y.ravel().astype(jnp.float32)
    k, frac = _ranks(v.size, qs)
    a, b = _bracket(v, k)
    # y where x equals each order statistic (the same value wherever it does): a masked
    # max, since a variadic argmax is a slow reduction on CPU
    at = lambda t: jnp.max(jnp.where(v[None, :] == t[:, None], w[None, :], -jnp.inf), axis=1)  # noqa: E731
    return _lerp(at(a), at(b), frac)


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

    # pooled: site by site (vmapped over sites, the histogram scatters are slower on CPU)
    for name, h in sites.items():
        h = h.astype(jnp.float32)
        src = derived.get(name)
        hs = sampled(name)
        p = percentiles(hs, qs) if src is None else percentiles_through(sampled(src), hs, qs)
        put(name, "", jnp.mean(h), jnp.std(h), p)
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
        k, frac = _ranks(n, qs)
        k = jnp.asarray(k)
        p = _lerp(s[:, k], s[:, jnp.minimum(k + 1, n - 1)], frac)
        mean, std = jnp.mean(full, axis=1), jnp.std(full, axis=1)
        for i, (name, j, _, _) in enumerate(groups):
            put(name, f"u{j}/", mean[i], std[i], p[i])
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


def module_stats(
    params: Mapping, grads: Mapping, batch_stats: Mapping
) -> dict[str, dict[str, Array]]:
    """Parameter statistics of any model, per module path (``stage1/block1/conv1``).

    The statistics of :func:`layer_stats`, found by leaf name: a module with a
    ``kernel`` gets ``weight_norm`` and ``grad_norm`` (of the kernel) and, with a
    ``bias``, ``bias_mean``/``bias_std``; a module without a kernel (a norm) gets
    ``gamma_mean``/``gamma_std`` of its ``scale`` and ``beta_mean``/``beta_std`` of its
    ``bias``; a ``mean``/``var`` in ``batch_stats`` gives ``running_mean_mean``...
    ``running_var_std``. Other leaves are not summarized.
    """
    flat_p, flat_g = flatten_dict(params), flatten_dict(grads)
    modules: dict[tuple, dict[str, tuple[Array, Array]]] = {}
    for path, v in flat_p.items():
        modules.setdefault(path[:-1], {})[path[-1]] = (v, flat_g[path])
    out: dict[str, dict[str, Array]] = {}
    for mod, leaves in modules.items():
        d: dict[str, Array] = {}
        if "kernel" in leaves:
            w, g = leaves["kernel"]
            d["weight_norm"], d["grad_norm"] = jnp.sqrt(_sq(w)), jnp.sqrt(_sq(g))
            named = {"bias": "bias"}
        else:
            named = {"scale": "gamma", "bias": "beta"}
        for key, name in named.items():
            if key in leaves:
                d[f"{name}_mean"] = jnp.mean(leaves[key][0])
                d[f"{name}_std"] = jnp.std(leaves[key][0])
        if d and mod:
            out["/".join(mod)] = d
    for path, v in flatten_dict(batch_stats).items():
        if path[-1] in ("mean", "var") and path[:-1]:
            d = out.setdefault("/".join(path[:-1]), {})
            d[f"running_{path[-1]}_mean"] = jnp.mean(v)
            d[f"running_{path[-1]}_std"] = jnp.std(v)
    return out


# --------------------------------------------------------------------------- ICS and landscape
# Santurkar, Tsipras, Ilyas & Madry 2018, "How Does Batch Normalization Help Optimization?".
# ``loss_fn(params, batch) -> scalar`` is the training loss on one batch (BN in train
# mode, with the same noise for every call where there is noise); ``layers`` are
# parameter subtrees in network order, by path (``layer1`` .. ``head`` for the built-ins,
# ``stage1/block1/conv1``... for any model).


def layer_weight(tree: Mapping) -> Array:
    """A layer's weight matrix in its parameter subtree: ``kernel`` or ``linear/kernel``."""
    if "kernel" in tree:
        return tree["kernel"]
    if "linear" in tree and "kernel" in tree["linear"]:
        return tree["linear"]["kernel"]
    raise ValueError(f"no kernel in a layer's parameters (keys {sorted(tree)})")


def _subtree(tree: Mapping, name: str) -> Mapping:
    for key in name.split("/"):
        tree = tree[key]
    return tree


def _norm(tree) -> Array:
    return jnp.sqrt(_sq(tree))


def gradient_ics(
    loss_fn, params: Mapping, batch, update: Mapping, layers: Sequence[str]
) -> dict[str, dict[str, Array]]:
    """Gradient-based internal covariate shift of every layer (Santurkar et al. 2018).

    For layer i: ``G`` is the gradient of the loss w.r.t. its weight matrix at
    ``params``; ``G'`` the same gradient on the same batch after layers ``1..i-1``
    (``layers[:i]``) have taken ``update`` (``params + update`` for them; the optimizer's
    lr-scaled update of this step), layer i and later unchanged. Returns
    ``{layer: {'grad_diff_l2': ||G - G'||_2, 'grad_diff_rel', 'grad_cos': cos(G, G')}}``; both are exactly
    0 and 1 for the first layer. All gradients come from one ``lax.map`` over the L
    shifted parameter sets (row 0: none moved), so G and G' are computed alike.
    ``grad_diff_rel`` is ``||G - G'||_2 / ||G||_2``: the raw norm grows with the step
    size and the gradient's size, the ratio does not.
    """
    layers = list(layers)
    n = len(layers)
    moved = jnp.tril(jnp.ones((n, n), bool), k=-1)  # moved[i, j]: layer j updated for row i
    flat_p, flat_u = flatten_dict(params), flatten_dict(update)
    owner = {}  # leaf path -> the layer it belongs to
    for j, name in enumerate(layers):
        prefix = tuple(name.split("/"))
        for path in flat_p:
            if path[: len(prefix)] == prefix:
                owner[path] = j

    def grads_at(mask: Array):
        p = unflatten_dict({
            path: jnp.where(mask[owner[path]], a + flat_u[path], a) if path in owner else a
            for path, a in flat_p.items()
        })  # fmt: skip
        g = jax.grad(loss_fn)(p, batch)
        return [layer_weight(_subtree(g, name)).astype(jnp.float32) for name in layers]

    stacked = lax.map(grads_at, moved)  # per layer: (n, *kernel shape)
    out: dict[str, dict[str, Array]] = {}
    for i, name in enumerate(layers):
        g, g2 = stacked[i][0], stacked[i][i]
        diff = jnp.sqrt(jnp.sum(jnp.square(g - g2)))
        denom = jnp.sqrt(jnp.sum(jnp.square(g))) * jnp.sqrt(jnp.sum(jnp.square(g2)))
        cos = jnp.sum(g * g2) / jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)
        rel = diff / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), jnp.finfo(jnp.float32).tiny)
        out[name] = {"grad_diff_l2": diff, "grad_diff_rel": rel, "grad_cos": cos}
    return out


def landscape(
    loss_fn, params: Mapping, batch, lr: Array | float, multiples: Sequence[float],
    lengths: Sequence[float] = (),
) -> dict[str, Array]:  # fmt: skip
    """The loss landscape along the gradient (Santurkar et al. 2018, Fig. 4).

    With ``g`` the gradient at ``params`` and ``d = -lr * g`` the lr-scaled gradient
    step, the loss and gradient are evaluated at ``params + c * d`` for every ``c`` in
    ``multiples``. Returns ``loss_range`` (max - min of the loss over those points and
    ``params`` itself), ``grad_predictiveness`` (max over c of ``||grad(c) - g||_2``)
    and ``beta_smoothness`` (max over c of ``||grad(c) - g||_2 / ||c * d||_2``, the
    "effective" beta-smoothness), and ``grad_l2`` (``||g||_2``: the path's length is
    ``max(c) * lr * ||g||``, so nets with larger gradients travel further). Gradients
    are of every parameter.

    ``lengths``: the same three measures (suffix ``_len``) at points a fixed distance
    ``l`` along the descent direction, ``params - l * g / ||g||``, the same for every
    network whatever its learning rate and gradient size.
    """
    g0 = jax.grad(loss_fn)(params, batch)
    step = jax.tree.map(lambda g: -lr * g, g0)
    out = _along(loss_fn, params, batch, g0, step, [float(c) for c in multiples], "")
    if lengths:
        unit = jax.tree.map(lambda g: -g / jnp.maximum(_norm(g0), 1e-30), g0)
        out |= _along(loss_fn, params, batch, g0, unit, [float(v) for v in lengths], "_len")
    out["grad_l2"] = _norm(g0)
    return out


def _along(loss_fn, params, batch, g0, direction, cs: list[float], suffix: str) -> dict:
    """Loss range, gradient predictiveness and beta-smoothness at ``params + c *
    direction`` for each ``c`` (and ``params``)."""
    cs_ = jnp.asarray([0.0, *cs], jnp.float32)
    vg = jax.value_and_grad(loss_fn)

    def at(c: Array):
        p = jax.tree.map(lambda a, s: a + c.astype(a.dtype) * s, params, direction)
        loss, g = vg(p, batch)
        return loss.astype(jnp.float32), _norm(jax.tree.map(jnp.subtract, g, g0))

    losses, dg = lax.map(at, cs_)
    dist = jnp.abs(cs_[1:]) * _norm(direction)
    ratio = dg[1:] / jnp.maximum(dist, jnp.finfo(jnp.float32).tiny)
    return {
        f"loss_range{suffix}": jnp.max(losses) - jnp.min(losses),
        f"grad_predictiveness{suffix}": jnp.max(dg[1:]),
        f"beta_smoothness{suffix}": jnp.max(ratio),
    }


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
