"""The engine: the compiled chunk every run goes through, and where its batches come from.

A run is M members (a sweep's learning rates x seeds; a single run is M = 1) on a
mesh of devices (:mod:`bnlab.engine.devices`). Every array of a member state
(:class:`~bnlab.engine.step.TrainState`) has a leading member axis. A member differs from
another only by data in its state: its parameters, its key (its seed: its
initialization and its data order) and its peak learning rate (in the optimizer
state, :mod:`bnlab.engine.optim`). Members are laid out as a grid, learning rate major
(member ``i`` = lr ``i // S``, seed ``i % S``); members of one seed share every batch,
so a batch meets all their weights in one wide matmul.

A chunk is ``length`` steps of :meth:`bnlab.engine.step.Learner.train_step`: an outer
``lax.scan`` over probe intervals, each an inner ``lax.scan`` of ``probe.every``
steps followed by one probe of the fixed probe batch (:class:`Metrics`). Batches are
drawn on device from the epoch permutations the chunk spans (:func:`batch_indices`
is the one rule; each epoch's order is computed once, ahead of need, by
:mod:`bnlab.engine.epochs`), so the host only wakes between chunks. The chunk is ``vmap``-ped
over the members of a device and ``shard_map``-ped over the mesh. With a probe
device, the chunk returns the state at every probe and a second program computes the
activation statistics there, beside the next chunk; the numbers are the same.

With ``host_loop`` the host dispatches the same steps one program at a time
(:mod:`bnlab.engine.host_steps`); the programs are compiled ahead of time as one set
(:mod:`bnlab.engine.programs`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnlab.engine.batches import _take, batch_indices, epoch_permutation
from bnlab.engine.devices import DATA, MEMBERS
from bnlab.engine.diagnostics import sharpness_probe
from bnlab.engine.epochs import EpochOrders
from bnlab.engine.grid import grid_map
from bnlab.engine.host_steps import HostSteps
from bnlab.engine.metrics import Metrics
from bnlab.engine.programs import Programs
from bnlab.engine.step import Learner, TrainState, stack

Array = jax.Array
__all__ = ["Engine", "Metrics", "batch_indices", "epoch_permutation", "grid_map"]


# --------------------------------------------------------------------------- the engine


class Engine:
    """The compiled chunk, probes and evaluation of a learner's members on one dataset.

    ``grid`` is the member grid ``(L, S)``; ``mesh`` splits it over its ``members``
    axis (learning rates first) and each batch over its ``data`` axis. ``arrays``: the
    dataset (train, test, optional val splits and the probe batch), kept on device.
    """

    def __init__(self, learner: Learner, arrays: dict[str, np.ndarray], *,
                 grid: tuple[int, int], batch_size: int, every: int,
                 ics_every: int, ics_at: str = "before", mesh=None, probe_device=None,
                 probes: bool = True, host_loop: bool = False, sharpness=None):  # fmt: skip
        self.learner, self.grid, self.mesh = learner, grid, mesh
        self.sharpness = sharpness if probes else None  # diagnostics.Sharpness, or None: off
        self.host_loop = host_loop
        L, S = grid
        md = mesh.shape[MEMBERS] if mesh is not None else 1
        self.shards = mesh.shape[DATA] if mesh is not None else 1
        self.local_grid = (L // md, S) if L % md == 0 else (1, S // md)
        self.batch_size, self.local_batch = batch_size, batch_size // self.shards
        self.every, self.probes = every, probes
        self.ics_every = ics_every if probes else 0
        self.ics_before = ics_at == "before"
        self.probe_device = probe_device if probes else None
        self.splits = [s for s in ("test", "val") if f"{s}_y" in arrays]  # evaluated
        self.n_train = len(arrays["train_y"])
        self.steps_per_epoch = self.n_train // batch_size
        self.data = self._place({k: jnp.asarray(v) for k, v in arrays.items()}, P())
        if self.probe_device is not None:
            self.remote = jax.device_put(
                {k: v for k, v in self.data.items() if not k.startswith("train")},
                self.probe_device,
            )
        pm, ics = P(MEMBERS), bool(self.ics_every)
        # a device's epoch orders are its seeds': split where seeds are split
        self.seed_spec = P(MEMBERS) if md > 1 and L % md else P()
        metrics_specs = Metrics(
            step=P(), loss=pm, acc=pm, lr=pm, layers=pm, acts=pm if probes else None,
            ics=pm if ics else None, ics_due=P() if ics else None,
            **(dict(sharpness=pm, sharpness_due=P()) if self.sharpness else {}),
        )  # fmt: skip
        self._chunk_jit = jax.jit(
            self._spmd(self._chunk, (pm, metrics_specs, None), (pm, P(), P(), pm)),
            static_argnames="length", donate_argnums=0,
        )  # fmt: skip
        self._measure_jit = jax.jit(self._spmd(self._measure, (pm, pm)))
        self._layers0_jit = jax.jit(self._spmd(self._layers0, pm))
        self._eval_jit = jax.jit(self._spmd(self._evaluate, (pm, pm)))
        self._snap_acts_jit = jax.jit(self._snapshot_acts)
        self._eval_beside_jit = jax.jit(self._evaluate)
        self._hist_jit: dict[int, Any] = {}  # histograms(), per number of bins
        self.orders = EpochOrders(self)
        self.host_steps = HostSteps(self, metrics_specs) if host_loop else None
        self.programs = Programs(self)  # the compile set

    # -- placement and sharding ----------------------------------------------------
    def _place(self, tree: Any, spec: P) -> Any:
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, spec))

    def place_states(self, states: TrainState) -> TrainState:
        return self._place(states, P(MEMBERS))

    def _spmd(self, fn, out_specs, in_specs=None):
        """``fn(states, *shared)`` over the mesh: members split over its ``members``
        axis, everything else replicated (or as ``in_specs`` says)."""
        if self.mesh is None:
            return fn

        def run(states, *shared, **kw):
            specs = in_specs or (P(MEMBERS),) + (P(),) * len(shared)
            return jax.shard_map(partial(fn, **kw), mesh=self.mesh, in_specs=specs,
                                 out_specs=out_specs)(states, *shared)  # fmt: skip

        return run

    # -- one member ------------------------------------------------------------------
    # -- many members ----------------------------------------------------------------
    def _members(self, fn, kinds):
        return grid_map(fn, kinds, self.local_grid)

    def _each(self, fn, states: TrainState, *shared):
        """``fn(member state, *shared)`` for every member, one after another (the
        percentiles' histogram scatters are slow batched on CPU; with ``host_loop`` the
        loop is unrolled in the trace)."""
        n = jax.tree.leaves(states)[0].shape[0]
        if n == 1:
            return jax.tree.map(
                lambda o: o[None], fn(jax.tree.map(lambda v: v[0], states), *shared)
            )
        if self.host_loop:
            outs = [fn(jax.tree.map(lambda v, i=i: v[i], states), *shared) for i in range(n)]
            return jax.tree.map(lambda *o: jnp.stack(o), *outs)
        return lax.map(lambda st: fn(st, *shared), states)

    def _measure(self, states: TrainState, probe_x: Array) -> tuple[dict, dict]:
        return self._each(self.learner.activations, states, probe_x), self._layers0(states)

    def _layers0(self, states: TrainState) -> dict:
        """Layer statistics with no step taken (gradient norms and update ratios read as
        zero)."""
        zeros = jax.tree.map(jnp.zeros_like, states.params)
        stats = self._members(self.learner.last_layer_stats, ("member", "member"))
        return stats(states, (zeros, zeros))

    def _evaluate(self, states: TrainState, x: Array, y: Array):
        return self._members(self.learner.evaluate_one, ("member", None, None))(states, x, y)

    def _snapshot_acts(self, snaps: TrainState, probe_x: Array) -> dict:
        lead = snaps.step.shape  # (M, P)
        flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[len(lead) :]), snaps)
        out = self._each(self.learner.activations, flat, probe_x)
        return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)

    # -- the steps of a chunk -----------------------------------------------------------
    def _perms(self, states: TrainState, t0: Array, steps: int):
        """The epoch permutations of every seed that steps ``t0 .. t0 + steps`` draw from,
        and the first epoch's number."""
        L, S = self.local_grid
        spe, n = self.steps_per_epoch, self.n_train
        epoch0 = t0 // spe
        seed_keys = states.key.reshape((L, S) + states.key.shape[1:])[0]
        count = self._count(steps)
        perms = jax.vmap(lambda k: jax.vmap(lambda e: epoch_permutation(k, e, n))(
            epoch0 + jnp.arange(count)))(seed_keys)  # fmt: skip
        return perms, epoch0

    def _count(self, steps: int) -> int:
        """How many epochs ``steps`` consecutive steps (and the batch after them) can touch."""
        return -(-steps // self.steps_per_epoch) + 1

    def _given_perms(self, states: TrainState, t0: Array, orders: tuple, steps: int):
        """The permutations of :meth:`_perms` from ``orders`` (:mod:`bnlab.engine.epochs`),
        or computed here where they are not the members' seeds' (same batches either way)."""
        L, S = self.local_grid
        seed_keys = states.key.reshape((L, S) + states.key.shape[1:])[0]
        perms = jnp.stack([p for p, _ in orders], axis=1)
        ours = jnp.all(jnp.stack([jnp.all(k == seed_keys) for _, k in orders]))
        # (`+ perms * 0`: the same type as the given orders on a mesh, varying over members)
        computed = lambda: self._perms(states, t0, steps)[0] + perms * 0  # noqa: E731
        return lax.cond(ours, lambda: perms, computed)

    def _batch(self, t: Array, perms: Array, epoch0: Array, data: dict):
        """This device's share of batch ``t``, per seed."""
        spe = self.steps_per_epoch
        offset = lax.axis_index(DATA) * self.local_batch if self.shards > 1 else 0

        def take(perm):
            return _take(perm[t // spe - epoch0], t, spe, self.batch_size, offset,
                         self.local_batch)  # fmt: skip

        idx = jax.vmap(take)(perms)
        return data["train_x"][idx], data["train_y"][idx]

    def _one(self, st: TrainState, t: Array, perms: Array, epoch0: Array, data: dict):
        """Training step ``t`` of every member: ``(state, loss, acc, (grads, update))``."""
        x, y = self._batch(t, perms, epoch0, data)
        step_all = self._members(self.learner.train_step, ("member", "seed", "seed"))
        st, (loss, acc, grads) = step_all(st, x, y)
        return st, loss, acc, grads

    def _probe(self, st: TrainState, t: Array, grads: Any, perms: Array, epoch0: Array,
               data: dict):  # fmt: skip
        """The measurements after ``t`` steps (the state ``st``, the last step's
        gradients and update): everything of a :class:`Metrics` row but the losses. Gradient-ICS is
        measured on the batch step ``t + 1`` is about to use (``ics_at=before``) or on
        step ``t``'s own (``after``)."""
        res = dict(step=t, lr=self._members(self.learner.lr_at, ("member", None))(st, t))
        stats = self._members(self.learner.last_layer_stats, ("member", "member"))
        res["layers"] = stats(st, grads)
        if self.probe_device is not None:  # activations later, on the probe device
            res["snaps"] = st.replace(opt_state=None)
        elif self.probes:
            res["acts"] = self._each(self.learner.activations, st, data["probe_x"])
        if self.ics_every:
            x, y = self._batch(t if self.ics_before else t - 1, perms, epoch0, data)
            due = t % self.ics_every == 0
            ics = self._members(self.learner.ics, ("member", "seed", "seed"))
            shapes = jax.eval_shape(ics, st, x, y)
            zero = jnp.zeros_like(st.step)  # per member, typed as the members vary
            res["ics"] = lax.cond(
                due, lambda: ics(st, x, y),
                lambda: jax.tree.map(lambda s: zero.astype(s.dtype), shapes),
            )  # fmt: skip
            res["ics_due"] = due
        if self.sharpness is not None:
            res.update(sharpness_probe(self, st, t, data))
        return res

    @staticmethod
    def _metrics(out: dict) -> tuple[Metrics, Any]:
        """The chunk's :class:`Metrics` (and snapshots) from its probes' rows stacked
        along a leading probe axis (``loss``/``acc``: (probes, every, members))."""
        first = lambda tree: jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), tree)  # noqa: E731
        metrics = Metrics(
            step=out["step"], loss=jnp.moveaxis(out["loss"], 2, 0),
            acc=jnp.moveaxis(out["acc"], 2, 0), lr=first(out["lr"]),
            layers=first(out["layers"]), acts=first(out.get("acts")),
            ics=first(out.get("ics")), ics_due=out.get("ics_due"),
            sharpness=first(out.get("sharpness")), sharpness_due=out.get("sharpness_due"),
        )  # fmt: skip
        return metrics, first(out.get("snaps"))

    def _chunk(self, states: TrainState, t0: Array, data: dict, orders: tuple, length: int):
        perms, epoch0 = self._given_perms(states, t0, orders, length), t0 // self.steps_per_epoch

        def quiet(carry, _):
            st, t = carry
            st, loss, acc, _ = self._one(st, t, perms, epoch0, data)
            return (st, t + 1), (loss, acc)

        def interval(carry, _):
            # the probe reads the last step's gradients and update: only that step returns them
            carry, (loss, acc) = lax.scan(quiet, carry, None, length=self.every - 1)
            st, t = carry
            st, loss1, acc1, grads = self._one(st, t, perms, epoch0, data)
            res = self._probe(st, t + 1, grads, perms, epoch0, data)
            res.update(loss=jnp.concatenate([loss, loss1[None]]),
                       acc=jnp.concatenate([acc, acc1[None]]))  # fmt: skip
            return (st, t + 1), res

        (states, _), out = lax.scan(interval, (states, t0), None, length=length // self.every)
        metrics, snaps = self._metrics(out)
        return states, metrics, snaps

    # -- public calls (futures) -------------------------------------------------------
    def compile(self, states: TrainState, lengths: list[int]) -> float:
        """Compile every program chunks of ``lengths`` need (:class:`Programs`); seconds."""
        return self.programs.compile(states, lengths)

    def compiled(self, length: int) -> bool:
        return self.programs.compiled(length)

    def chunk(self, states: TrainState, t0: int, length: int) -> tuple[TrainState, Metrics]:
        """``length`` steps of every member from global step ``t0`` (donates
        ``states``). With a probe device, ``acts`` is computed there once the chunk is
        done: dispatch the next chunk before reading it, and the two overlap."""
        self.compile(states, [length])
        if self.host_loop:
            return self.host_steps.chunk(states, t0, length)
        t = jnp.asarray(t0, jnp.int32)
        orders = self.orders.get(states, t0 // self.steps_per_epoch, self._count(length))
        states, metrics, snaps = self.programs["chunk", length](states, t, self.data, orders)
        if snaps is not None:
            snaps = jax.device_put(snaps, self.probe_device)
            acts = self.programs["snaps", length // self.every](snaps, self.remote["probe_x"])
            metrics = metrics.replace(acts=acts)
        return states, metrics

    def keep(self, states: TrainState) -> TrainState:
        """A copy of ``states`` that no chunk donates (a future): what the host reads at a
        chunk's end (evaluation, checkpoints, histograms) while the next chunk, launched
        before this one is done, runs on the original. A copy of the buffers in place
        (no program to compile at start-up)."""
        return jax.device_put(states, may_alias=False)

    def measure(self, states: TrainState) -> Metrics:
        """The probe of ``states`` (gradient norms read as zero: no step was taken); with
        a probe device, its activations are computed there."""
        self.compile(states, [])
        add = lambda tree: jax.tree.map(lambda a: a[:, None], tree)  # noqa: E731
        if self.probe_device is None:
            acts, layers = self.programs["measure",](states, self.data["probe_x"])
            acts = add(acts)
        else:
            layers = self.programs["layers0",](states)
            one = jax.device_put(add(states.replace(opt_state=None)), self.probe_device)
            acts = self.programs["snaps", 1](one, self.remote["probe_x"])
        step = jnp.zeros((1,), jnp.int32)
        return Metrics(step=step, loss=None, acc=None, lr=None, layers=add(layers), acts=acts)

    def evaluate(self, states: TrainState) -> dict[str, tuple]:
        """``{split: (loss, accuracy)}`` (each (M,)) on the test split and the validation
        split where there is one, BN in eval mode; on the probe device where there is
        one. A future: ``states`` must not be donated to a chunk before it is read (pass
        a copy, :meth:`keep`); the host does not wait for the probe device's queue."""
        self.compile(states, [])
        if self.probe_device is not None:
            copy = jax.device_put(states, self.probe_device)
            kind, arrays = "eval_beside", self.remote
        else:
            copy, kind, arrays = states, "eval", self.data
        return {
            s: self.programs[kind, s](copy, arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in self.splits
        }

    def histograms(self, states: TrainState, bins: int, beside: bool = True) -> dict:
        """For the loggers: ``{site: probe.histogram}`` (each array with a leading member
        axis) of every site's raw values on the probe batch at ``states``; one forward
        pass of the probe batch per member, asked for only at the steps a logger wants
        them. ``beside``: on the probe device where there is one. A future: ``states``
        must not be donated before it is read (pass a copy, :meth:`keep`)."""
        if beside and self.probe_device is not None:
            states = jax.device_put(states, self.probe_device)
            x = self.remote["probe_x"]
        else:
            x = self.data["probe_x"]
        if bins not in self._hist_jit:
            hist = partial(self.learner.histograms, bins=bins)
            self._hist_jit[bins] = jax.jit(lambda st, x: self._each(hist, st, x))
        return self._hist_jit[bins](states, x)

    def init(self, seeds: list[int], lrs: list[float], x0: np.ndarray) -> TrainState:
        """Member states: member i from seed ``seeds[i]`` with peak lr ``lrs[i]``, each
        initialized as the single run with its settings."""
        init = jax.jit(self.learner.init)
        per = [init(jnp.asarray(s, jnp.int32), jnp.asarray(lr, jnp.float32), x0)
               for s, lr in zip(seeds, lrs, strict=True)]  # fmt: skip
        return self.place_states(stack(per))
