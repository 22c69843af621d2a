"""Parameter statistics per layer: weight and gradient norms, gamma/beta and running
statistics summaries (pure functions, jit-able)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

Array = jax.Array


def _sq(tree) -> Array:
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def _norms(w, g, u) -> dict[str, Array]:
    """``weight_norm``, ``grad_norm`` and, with the step's update ``u``, ``update_ratio``
    ||u|| / ||w|| (NaN where the weight is zero)."""
    wn = jnp.sqrt(_sq(w))
    d = {"weight_norm": wn, "grad_norm": jnp.sqrt(_sq(g))}
    if u is not None:
        d["update_ratio"] = jnp.where(wn > 0, jnp.sqrt(_sq(u)) / wn, jnp.nan)
    return d


def layer_stats(
    params: Mapping, grads: Mapping, batch_stats: Mapping, layers: Sequence[str],
    updates: Mapping | None = None,
) -> dict[str, dict[str, Array]]:  # fmt: skip
    """Per hidden layer: weight and gradient norms, gamma/beta and running-stat summaries.

    Keys: ``weight_norm`` and ``grad_norm`` (of the linear map's kernel),
    ``update_ratio`` (with ``updates``, the step's applied update: ||delta W|| / ||W||,
    W the weight after the step),
    ``gamma_mean``, ``gamma_std``, ``beta_mean``, ``beta_std`` where the norm learns
    them, ``bias_mean``/``bias_std`` of the linear map's bias, and
    ``running_mean_mean``, ``running_mean_std``, ``running_var_mean``,
    ``running_var_std`` where the norm keeps running statistics.
    """
    out: dict[str, dict[str, Array]] = {}
    for layer in layers:
        p, g = params[layer], grads[layer]
        u = None if updates is None else updates[layer]["linear"]["kernel"]
        d = _norms(p["linear"]["kernel"], g["linear"]["kernel"], u)
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
    params: Mapping, grads: Mapping, batch_stats: Mapping, updates: Mapping | None = None
) -> dict[str, dict[str, Array]]:
    """Parameter statistics of any model, per module path (``stage1/block1/conv1``).

    The statistics of :func:`layer_stats`, found by leaf name: a module with a
    ``kernel`` gets ``weight_norm``, ``grad_norm`` and ``update_ratio`` (of the kernel)
    and, with a
    ``bias``, ``bias_mean``/``bias_std``; a module without a kernel (a norm) gets
    ``gamma_mean``/``gamma_std`` of its ``scale`` and ``beta_mean``/``beta_std`` of its
    ``bias``; a ``mean``/``var`` in ``batch_stats`` gives ``running_mean_mean``...
    ``running_var_std``. Every other leaf, whatever its name (a custom layer's ``w``,
    an embedding), gets ``weight_norm``, ``grad_norm`` and ``update_ratio`` at its own
    path (``linear1/w``).
    """
    flat_p, flat_g = flatten_dict(params), flatten_dict(grads)
    flat_u = {} if updates is None else flatten_dict(updates)
    modules: dict[tuple, dict[str, tuple[Array, Array, Array | None]]] = {}
    for path, v in flat_p.items():
        modules.setdefault(path[:-1], {})[path[-1]] = (v, flat_g[path], flat_u.get(path))
    out: dict[str, dict[str, Array]] = {}
    for mod, leaves in modules.items():
        d: dict[str, Array] = {}
        if "kernel" in leaves:
            d.update(_norms(*leaves["kernel"]))
            named = {"bias": "bias"}
        else:
            named = {"scale": "gamma", "bias": "beta"}
        for key, name in named.items():
            if key in leaves:
                d[f"{name}_mean"] = jnp.mean(leaves[key][0])
                d[f"{name}_std"] = jnp.std(leaves[key][0])
        if d and mod:
            out["/".join(mod)] = d
        for key in sorted(set(leaves) - set(named) - {"kernel"}):
            out["/".join((*mod, key))] = _norms(*leaves[key])
    for path, v in flatten_dict(batch_stats).items():
        if path[-1] in ("mean", "var") and path[:-1]:
            d = out.setdefault("/".join(path[:-1]), {})
            d[f"running_{path[-1]}_mean"] = jnp.mean(v)
            d[f"running_{path[-1]}_std"] = jnp.std(v)
    return out


def effective_lr(
    stats: Mapping[str, Mapping[str, Array]], layers: Sequence[str], lr: Array | float
) -> dict[str, dict[str, Array]]:
    """``stats`` with ``effective_lr`` = lr / ||W||^2 added for each of ``layers``: the
    layers whose weight is scale-invariant (a dense/conv layer whose output goes straight
    into a normalizer). For such a weight, grad L(W) = grad L(W/||W||) / ||W||, so a
    plain SGD step moves the direction W/||W|| as a step of lr / ||W||^2 on the unit
    sphere would (van Laarhoven 2017; Hoffer et al. 2018): the learning rate the layer
    actually trains at. ``||W||`` is its ``weight_norm`` (the whole kernel's Frobenius
    norm); NaN where it is 0."""
    out = {k: dict(v) for k, v in stats.items()}
    for layer in layers:
        if layer in out and "weight_norm" in out[layer]:
            wn = out[layer]["weight_norm"]
            out[layer]["effective_lr"] = jnp.where(wn > 0, lr / jnp.square(wn), jnp.nan)
    return out


def layer_weight(tree: Mapping) -> Array:
    """A layer's weight matrix in its parameter subtree: ``kernel`` or ``linear/kernel``."""
    if "kernel" in tree:
        return tree["kernel"]
    if "linear" in tree and "kernel" in tree["linear"]:
        return tree["linear"]["kernel"]
    raise ValueError(f"no kernel in a layer's parameters (keys {sorted(tree)})")


def subtree(tree: Mapping, name: str) -> Mapping:
    for key in name.split("/"):
        tree = tree[key]
    return tree


def tree_norm(tree) -> Array:
    return jnp.sqrt(_sq(tree))
