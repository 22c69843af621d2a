"""The member grid: a function of one member mapped over a sweep's ``(lrs, seeds)`` grid."""

from __future__ import annotations

import jax


def grid_map(fn, kinds: tuple[str | None, ...], grid: tuple[int, int]):
    """``fn`` of one member, mapped over the members of a ``(L, S)`` grid.

    ``kinds[k]`` says how argument k varies: ``'member'`` (leading L*S), ``'seed'``
    (leading S) or None (shared: not mapped, so a shared batch meets every member's
    weights in one wide matmul). Outputs lead with L*S. A grid axis of one is
    squeezed, not mapped (a unit ``vmap`` costs transposes in every step).
    """
    L, S = grid

    def over_seeds(*args):
        if S == 1:
            args = [
                jax.tree.map(lambda v: v[0], a) if k else a
                for a, k in zip(args, kinds, strict=True)
            ]
            return jax.tree.map(lambda o: o[None], fn(*args))
        return jax.vmap(fn, in_axes=tuple(0 if k else None for k in kinds))(*args)

    def wrapped(*args):
        args = [
            jax.tree.map(lambda v: v.reshape((L, S) + v.shape[1:]), a) if k == "member" else a
            for a, k in zip(args, kinds, strict=True)
        ]
        if L == 1:
            args = [jax.tree.map(lambda v: v[0], a) if k == "member" else a
                    for a, k in zip(args, kinds, strict=True)]  # fmt: skip
            out = jax.tree.map(lambda o: o[None], over_seeds(*args))
        else:
            lr_axes = tuple(0 if k == "member" else None for k in kinds)
            out = jax.vmap(over_seeds, in_axes=lr_axes)(*args)
        return jax.tree.map(lambda o: o.reshape((L * S,) + o.shape[2:]), out)

    return wrapped
