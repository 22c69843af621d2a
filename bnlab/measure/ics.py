"""Gradient-based internal covariate shift and the loss landscape along the gradient
(pure functions, jit-able)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict
from jax import lax

from bnlab.measure.layers import layer_weight, subtree, tree_norm

Array = jax.Array

# Santurkar, Tsipras, Ilyas & Madry 2018, "How Does Batch Normalization Help Optimization?".
# ``loss_fn(params, batch) -> scalar`` is the training loss on one batch (BN in train
# mode, with the same noise for every call where there is noise); ``layers`` are
# parameter subtrees in network order, by path (``layer1`` .. ``head`` for the built-ins,
# ``stage1/block1/conv1``... for any model).


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
        return [layer_weight(subtree(g, name)).astype(jnp.float32) for name in layers]

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
        unit = jax.tree.map(lambda g: -g / jnp.maximum(tree_norm(g0), 1e-30), g0)
        out |= _along(loss_fn, params, batch, g0, unit, [float(v) for v in lengths], "_len")
    out["grad_l2"] = tree_norm(g0)
    return out


def _along(loss_fn, params, batch, g0, direction, cs: list[float], suffix: str) -> dict:
    """Loss range, gradient predictiveness and beta-smoothness at ``params + c *
    direction`` for each ``c`` (and ``params``)."""
    cs_ = jnp.asarray([0.0, *cs], jnp.float32)
    vg = jax.value_and_grad(loss_fn)

    def at(c: Array):
        p = jax.tree.map(lambda a, s: a + c.astype(a.dtype) * s, params, direction)
        loss, g = vg(p, batch)
        return loss.astype(jnp.float32), tree_norm(jax.tree.map(jnp.subtract, g, g0))

    losses, dg = lax.map(at, cs_)
    dist = jnp.abs(cs_[1:]) * tree_norm(direction)
    ratio = dg[1:] / jnp.maximum(dist, jnp.finfo(jnp.float32).tiny)
    return {
        f"loss_range{suffix}": jnp.max(losses) - jnp.min(losses),
        f"grad_predictiveness{suffix}": jnp.max(dg[1:]),
        f"beta_smoothness{suffix}": jnp.max(ratio),
    }
