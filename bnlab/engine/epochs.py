"""The epoch orders a chunk draws its batches from, each computed once, ahead of need.

An epoch's order (:func:`~bnlab.engine.batches.epoch_permutation` of every seed, a
sort of the whole training set) costs about 25 ms on one CPU core for 60,000
examples: computed inside every 1,000-step chunk for the epochs it spans, it was ~10%
of the Fig. 1 step's time (``benchmarks/RESULTS.md``, issue 24). Here each epoch's
order is computed by a small program of its own, the first time a chunk asks for it
and one epoch before, on the probe device where there is one (its core waits while
training runs), and kept on the training devices until no chunk needs it. The chunk
checks that the orders it is given come from its members' keys and computes them itself
if not (:meth:`bnlab.engine.chunk.Engine._given_perms`), so a stale order can cost
time but never change a batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnlab.engine.batches import epoch_permutation
from bnlab.engine.devices import MEMBERS

Array = jax.Array


class EpochOrders:
    """The epoch orders of one engine's seeds, by epoch: ``(perm (S, n), keys (S, 2))``
    pairs, ``keys`` the seeds' data keys the order was computed from."""

    def __init__(self, engine: Any):
        e = self.engine = engine
        self.cache: dict[int, tuple[Array, Array]] = {}
        self.keys: Array | None = None  # the members' keys, copied from the first states
        if e.mesh is not None:
            # each device's orders are its members' seeds' (the same on devices that hold
            # the same seeds): split over the members axis, whatever the grid
            self._program = jax.jit(e._spmd(self._order, (P(MEMBERS), P(MEMBERS))))
        else:
            self._program = jax.jit(self._order)

    def _order(self, keys: Array, epoch: Array) -> tuple[Array, Array]:
        """Epoch ``epoch``'s order of every seed of the members whose keys are ``keys``."""
        L, S = self.engine.local_grid
        seed_keys = keys.reshape((L, S) + keys.shape[1:])[0]
        n = self.engine.n_train
        return jax.vmap(lambda k: epoch_permutation(k, epoch, n))(seed_keys), seed_keys

    def shapes(self, count: int) -> tuple:
        """The chunk's ``orders`` argument as shapes: ``count`` pairs."""
        e = self.engine
        md = e.mesh.shape[MEMBERS] if e.mesh is not None else 1
        S = md * e.local_grid[1]
        sharding = NamedSharding(e.mesh, P(MEMBERS)) if e.mesh is not None else None
        pair = (jax.ShapeDtypeStruct((S, e.n_train), jnp.int32, sharding=sharding),
                jax.ShapeDtypeStruct((S, 2), jnp.uint32, sharding=sharding))  # fmt: skip
        return (pair,) * count

    def _compute(self, epoch: int) -> tuple[Array, Array]:
        e = self.engine
        if e.mesh is None and e.probe_device is not None:  # on the idle core, then moved
            out = self._program(self.keys, jnp.int32(epoch))
            return jax.device_put(out, e.data["train_y"].sharding)
        return self._program(self.keys, jnp.int32(epoch))

    def get(self, states: Any, first: int, count: int) -> tuple:
        """The orders of epochs ``first .. first + count - 1`` (and, computed now for
        the next chunk, the one after), from the keys of the first ``states`` seen."""
        if self.keys is None:
            e = self.engine
            where = e.probe_device if e.mesh is None and e.probe_device is not None else None
            keys = states.key if where is None else jax.device_put(states.key, where)
            self.keys = jax.block_until_ready(jnp.copy(keys))  # not donated with states
        for epoch in [k for k in self.cache if k < first]:
            del self.cache[epoch]
        for epoch in range(first, first + count + 1):
            if epoch not in self.cache:
                self.cache[epoch] = self._compute(epoch)
        return tuple(self.cache[epoch] for epoch in range(first, first + count))
