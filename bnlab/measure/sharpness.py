"""Sharpness: the top eigenvalue of a loss's Hessian, by power iteration on
Hessian-vector products (pure functions, jit-able).

Cohen et al. 2021 ("Gradient Descent on Neural Networks Typically Occurs at the Edge of
Stability"): under gradient descent at learning rate lr the sharpness rises until it
reaches 2/lr and then hovers there. The Hessian is never formed: each product
``H v`` is one forward-over-reverse pass (``jax.jvp`` of ``jax.grad``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bnlab.measure.layers import tree_norm

Array = jax.Array


def hvp(loss_fn, params: Any, batches: Any, v: Any, unroll: bool = False) -> Any:
    """``H v`` with H the Hessian at ``params`` of the mean over the leading axis of
    ``batches`` of ``loss_fn(params, batch) -> scalar`` (one product per batch, in a
    ``lax.map``; ``unroll``: a loop in the trace instead)."""

    def one(batch):
        grad = lambda p: jax.grad(loss_fn)(p, batch)  # noqa: E731
        return jax.jvp(grad, (params,), (v,))[1]

    n = jax.tree.leaves(batches)[0].shape[0]
    if unroll:
        outs = [one(jax.tree.map(lambda a, i=i: a[i], batches)) for i in range(n)]
        return jax.tree.map(lambda *o: sum(o) / n, *outs)
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), lax.map(one, batches))


def top_eigenvalue(loss_fn, params: Any, batches: Any, key: Array, iters: int,
                   unroll: bool = False) -> Array:  # fmt: skip
    """The Hessian eigenvalue of largest magnitude (sign kept) of the mean loss over
    ``batches`` (see :func:`hvp`) at ``params``: ``iters`` steps of power iteration from a
    random direction drawn with ``key``; the value is the Rayleigh quotient ``v^T H v``
    of the last direction. In training the positive end of the spectrum dominates, so
    this is the top eigenvalue, the sharpness. Converges at the rate of the ratio of the
    second eigenvalue's magnitude to the first's."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(tree, [jax.random.normal(k, a.shape, jnp.float32).astype(a.dtype)
                                  for k, a in zip(keys, leaves, strict=True)])  # fmt: skip
    tiny = jnp.finfo(jnp.float32).tiny

    def unit(t):
        n = jnp.maximum(tree_norm(t), tiny)
        return jax.tree.map(lambda a: a / n.astype(a.dtype), t)

    def body(_, carry):
        v, _ = carry
        hv = hvp(loss_fn, params, batches, v, unroll)
        lam = sum(jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))
                  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv), strict=True))  # fmt: skip
        return unit(hv), lam

    lam0 = 0.0 * tree_norm(v)  # typed as v (under shard_map: varying as the members do)
    _, lam = lax.fori_loop(0, iters, body, (unit(v), lam0.astype(jnp.float32)))
    return lam
