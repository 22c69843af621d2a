"""The engine: the compiled chunk every run goes through, and where its batches come from.

A run is M members (a sweep's learning rates x seeds; a single run is M = 1) on a
mesh of devices (:mod:`bnlab.devices`). Every array of a member state
(:class:`~bnlab.step.TrainState`) has a leading member axis. A member differs from
another only by data in its state: its parameters, its key (its seed: its
initialization and its data order) and its peak learning rate (in the optimizer
state, :mod:`bnlab.optim`). Members are laid out as a grid, learning rate major
(member ``i`` = lr ``i // S``, seed ``i % S``); members of one seed share every batch,
so a batch meets all their weights in one wide matmul.

A chunk is ``length`` steps of :meth:`bnlab.step.Learner.train_step`: an outer
``lax.scan`` over probe intervals, each an inner ``lax.scan`` of ``probe.every``
steps followed by one probe of the fixed probe batch (:class:`Metrics`). Batches are
drawn on device from the epoch permutations the chunk spans (:func:`batch_indices`
is the one rule), so the host only wakes between chunks. The chunk is ``vmap``-ped
over the members of a device and ``shard_map``-ped over the mesh. With a probe
device, the chunk returns the state at every probe and a second program computes the
activation statistics there, beside the next chunk; the numbers are the same.

With ``host_loop`` (``step_loop=host``; ``auto``: models that convolve, on a CPU) the
host dispatches one compiled step after another (every ``probe.every``-th with its
probes) and stacks their rows as the scan would: XLA:CPU runs convolutions inside a
while loop several times slower (3.3x for the CNN preset: ``benchmarks/RESULTS.md``). Same
numbers either way (``tests/test_conv.py``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from bnlab.batches import _take, batch_indices, epoch_permutation
from bnlab.devices import DATA, MEMBERS
from bnlab.step import Learner, TrainState, stack

Array = jax.Array
__all__ = ["Engine", "Metrics", "batch_indices", "epoch_permutation", "grid_map"]  # + batches


# --------------------------------------------------------------------------- measurements


@struct.dataclass
class Metrics:
    """What a chunk measures, leading axes (members, probes): one row per probe.

    ``step`` (probes,) is the steps done at each probe; ``loss``/``acc`` (M, P, every)
    the training loss and accuracy of every step; ``lr`` (M, P) the learning rate at
    the probe; ``layers``, ``acts`` and ``ics`` are ``{name: {stat: (M, P)}}`` (per
    layer parameter statistics; activation statistics per site, None when probes are
    computed elsewhere and not yet attached; gradient-ICS and landscape measures,
    None when off, valid where ``ics_due``).
    """

    step: Array
    loss: Array | None
    acc: Array | None
    lr: Array | None
    layers: dict
    acts: dict | None = None
    ics: dict | None = None
    ics_due: Array | None = None

    def member(self, m: int) -> Metrics:
        """Member ``m``'s measurements (host arrays), the member axis dropped."""
        pick = lambda t: None if t is None else jax.tree.map(lambda a: np.asarray(a)[m], t)  # noqa: E731
        return self.replace(
            step=np.asarray(self.step), loss=pick(self.loss), acc=pick(self.acc),
            lr=pick(self.lr), layers=pick(self.layers), acts=pick(self.acts),
            ics=pick(self.ics), ics_due=None if self.ics_due is None else np.asarray(self.ics_due),
        )  # fmt: skip


class _Compiling(dict):
    """Lowered programs by key, each handed to ``pool`` to compile as it is set (XLA
    compiles outside the GIL); the values are futures of the compiled programs."""

    def __init__(self, pool: ThreadPoolExecutor):
        super().__init__()
        self.pool = pool

    def __setitem__(self, key: tuple, lowered: Any) -> None:
        super().__setitem__(key, self.pool.submit(lowered.compile))


def _one_probe(tree: Any) -> Any:
    """The shapes of ``tree`` (leading member axis) as snapshots of one probe."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((a.shape[0], 1, *a.shape[1:]), a.dtype), tree
    )


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
                 probes: bool = True, host_loop: bool = False):  # fmt: skip
        self.learner, self.grid, self.mesh = learner, grid, mesh
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
        metrics_specs = Metrics(
            step=P(), loss=pm, acc=pm, lr=pm, layers=pm, acts=pm if probes else None,
            ics=pm if ics else None, ics_due=P() if ics else None,
        )  # fmt: skip
        self._chunk_jit = jax.jit(self._spmd(self._chunk, (pm, metrics_specs, None)),
                                  static_argnames="length", donate_argnums=0)  # fmt: skip
        self._measure_jit = jax.jit(self._spmd(self._measure, (pm, pm)))
        self._layers0_jit = jax.jit(self._spmd(self._layers0, pm))
        self._eval_jit = jax.jit(self._spmd(self._evaluate, (pm, pm)))
        self._snap_acts_jit = jax.jit(self._snapshot_acts)
        self._eval_beside_jit = jax.jit(self._evaluate)
        self._hist_jit: dict[int, Any] = {}  # histograms(), per number of bins
        if host_loop:  # a device's permutations are its seeds': split where seeds are split
            ps = P(MEMBERS) if md > 1 and L % md else P()
            res_specs = dict(step=P(), lr=pm, layers=pm)
            res_specs.update({"snaps": pm} if self.probe_device is not None else
                             {"acts": pm} if probes else {})  # fmt: skip
            res_specs.update(dict(ics=pm, ics_due=P()) if ics else {})
            self._perms_jit = jax.jit(self._spmd(self._perms, (ps, P())), static_argnames="steps")
            self._step_jit = jax.jit(self._spmd(self._one, (pm, pm, pm, pm), (pm, P(), ps, P(), P())),
                                     donate_argnums=0)  # fmt: skip
            self._probe_jit = jax.jit(self._spmd(self._probe, res_specs,
                                                 (pm, P(), pm, ps, P(), P())))  # fmt: skip
        self._compiled: dict[tuple, Any] = {}  # (program, length or split) -> compiled

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
        """Layer statistics with no step taken (gradient norms read as zero)."""
        zeros = jax.tree.map(jnp.zeros_like, states.params)
        return self._members(self.learner.layer_stats, ("member", "member"))(states, zeros)

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
        return steps // self.steps_per_epoch + 2

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
        """Training step ``t`` of every member: ``(state, loss, acc, grads)``."""
        x, y = self._batch(t, perms, epoch0, data)
        step_all = self._members(self.learner.train_step, ("member", "seed", "seed"))
        st, (loss, acc, grads) = step_all(st, x, y)
        return st, loss, acc, grads

    def _probe(self, st: TrainState, t: Array, grads: Any, perms: Array, epoch0: Array,
               data: dict):  # fmt: skip
        """The measurements after ``t`` steps (the state ``st``, the last step's
        gradients): everything of a :class:`Metrics` row but the losses. Gradient-ICS is
        measured on the batch step ``t + 1`` is about to use (``ics_at=before``) or on
        step ``t``'s own (``after``)."""
        res = dict(step=t, lr=self._members(self.learner.lr_at, ("member", None))(st, t))
        res["layers"] = self._members(self.learner.layer_stats, ("member", "member"))(st, grads)
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
        )  # fmt: skip
        return metrics, first(out.get("snaps"))

    def _chunk(self, states: TrainState, t0: Array, data: dict, length: int):
        perms, epoch0 = self._perms(states, t0, length)

        def quiet(carry, _):
            st, t = carry
            st, loss, acc, _ = self._one(st, t, perms, epoch0, data)
            return (st, t + 1), (loss, acc)

        def interval(carry, _):
            # the probe reads the last step's gradients: only that step returns them
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

    # -- the same steps dispatched from the host (host_loop) ----------------------------
    def _host_chunk(self, states: TrainState, t0: int, length: int):
        """``_chunk`` as a loop on the host: one program per step (see the module doc).
        The permutations come two epochs at a time (the step's and the next, which the
        probe's batch may reach), so every program is one whatever the chunk's length."""
        run = lambda name: self._compiled[name,]  # noqa: E731
        spe = self.steps_per_epoch
        rows, acts = [], []
        t, epoch = t0, None
        for _ in range(length // self.every):
            losses, accs = [], []
            for _ in range(self.every):
                if t // spe != epoch:
                    epoch = t // spe
                    perms, epoch0 = run("perms")(states, np.int32(t))
                states, loss, acc, grads = run("step")(states, np.int32(t), perms, epoch0,
                                                       self.data)  # fmt: skip
                losses.append(loss), accs.append(acc)
                t += 1
            res = run("probe")(states, np.int32(t), grads, perms, epoch0, self.data)
            res.update(loss=jnp.stack(losses), acc=jnp.stack(accs))
            snaps = res.pop("snaps", None)
            if snaps is not None:  # this interval's probe, beside the next interval
                snap = jax.tree.map(lambda a: a[:, None], snaps)
                acts.append(self._compiled["snaps", 1](jax.device_put(snap, self.probe_device),
                                                       self.remote["probe_x"]))  # fmt: skip
            rows.append(res)
        out = jax.tree.map(lambda *r: jnp.stack(r), *rows)
        metrics, _ = self._metrics(out)
        if acts:
            on_probe = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *acts)
            metrics = metrics.replace(acts=on_probe)
        return states, metrics

    # -- compilation ----------------------------------------------------------------
    def compile(self, states: TrainState, lengths: list[int]) -> float:
        """Compile, ahead of time and concurrently, every program not compiled yet: the
        chunk of each length (with its probe program on the probe device, one per
        number of probes in a chunk), the step-0 probe and the evaluations. With a probe
        device the step-0 probe is its program of one probe and the evaluations run
        there only (two programs fewer to compile at start). Returns the seconds it
        took."""
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            jobs = _Compiling(pool)  # each program compiles while the next one is traced
            self._lower_all(states, lengths, jobs)
            done = {key: job.result() for key, job in jobs.items()}
        self._compiled.update(done)
        return time.perf_counter() - start

    def _lower_all(self, states: TrainState, lengths: list[int], jobs: dict) -> None:
        t0 = jnp.zeros((), jnp.int32)
        pd = self.probe_device
        on_pd = lambda tree: jax.tree.map(  # noqa: E731
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=SingleDeviceSharding(pd)),
            tree,
        )
        for n in lengths:
            if self.compiled(n):
                continue
            if self.host_loop:
                self._lower_host(states, jobs, on_pd)
                break
            low = self._chunk_jit.lower(states, t0, self.data, length=n)
            jobs["chunk", n] = low
            if pd is not None:
                self._lower_snaps(on_pd(low.out_info[2]), jobs)
        if ("measure",) not in self._compiled and ("layers0",) not in self._compiled:
            if pd is None:
                jobs["measure",] = self._measure_jit.lower(states, self.data["probe_x"])
            else:
                jobs["layers0",] = self._layers0_jit.lower(states)
                self._lower_snaps(on_pd(_one_probe(states.replace(opt_state=None))), jobs)
            for s in self.splits:
                if pd is None:
                    x, y = self.data[f"{s}_x"], self.data[f"{s}_y"]
                    jobs["eval", s] = self._eval_jit.lower(states, x, y)
                else:
                    x, y = self.remote[f"{s}_x"], self.remote[f"{s}_y"]
                    jobs["eval_beside", s] = self._eval_beside_jit.lower(on_pd(states), x, y)

    def _lower_snaps(self, snaps: Any, jobs: dict) -> None:
        """The probe device's activations of ``snaps`` (members, probes), one program
        per number of probes."""
        key = ("snaps", jax.tree.leaves(snaps)[0].shape[1])
        if key not in self._compiled and key not in jobs:
            jobs[key] = self._snap_acts_jit.lower(snaps, self.remote["probe_x"])

    def compiled(self, length: int) -> bool:
        if self.host_loop:  # one set of programs for every length
            return ("step",) in self._compiled
        return ("chunk", length) in self._compiled

    def _lower_host(self, states: TrainState, jobs: dict, on_pd) -> None:
        """The host loop's programs: two epochs' permutations, one step, one probe (and
        the probe device's activations of one snapshot)."""
        t0 = jnp.zeros((), jnp.int32)
        low = self._perms_jit.lower(states, t0, steps=0)
        perms, epoch0 = low.out_info
        step = self._step_jit.lower(states, t0, perms, epoch0, self.data)
        probe = self._probe_jit.lower(states, t0, step.out_info[3], perms, epoch0, self.data)
        jobs["perms",], jobs["step",], jobs["probe",] = low, step, probe
        snaps = probe.out_info.get("snaps")
        if snaps is not None:
            self._lower_snaps(on_pd(_one_probe(snaps)), jobs)

    # -- public calls (futures) -------------------------------------------------------
    def chunk(self, states: TrainState, t0: int, length: int) -> tuple[TrainState, Metrics]:
        """``length`` steps of every member from global step ``t0`` (donates
        ``states``). With a probe device, ``acts`` is computed there once the chunk is
        done: dispatch the next chunk before reading it, and the two overlap."""
        self.compile(states, [length])
        if self.host_loop:
            return self._host_chunk(states, t0, length)
        t = jnp.asarray(t0, jnp.int32)
        states, metrics, snaps = self._compiled["chunk", length](states, t, self.data)
        if snaps is not None:
            snaps = jax.device_put(snaps, self.probe_device)
            acts = self._compiled["snaps", length // self.every](snaps, self.remote["probe_x"])
            metrics = metrics.replace(acts=acts)
        return states, metrics

    def measure(self, states: TrainState) -> Metrics:
        """The probe of ``states`` (gradient norms read as zero: no step was taken); with
        a probe device, its activations are computed there."""
        self.compile(states, [])
        add = lambda tree: jax.tree.map(lambda a: a[:, None], tree)  # noqa: E731
        if self.probe_device is None:
            acts, layers = self._compiled["measure",](states, self.data["probe_x"])
            acts = add(acts)
        else:
            layers = self._compiled["layers0",](states)
            one = jax.device_put(add(states.replace(opt_state=None)), self.probe_device)
            acts = self._compiled["snaps", 1](one, self.remote["probe_x"])
        step = jnp.zeros((1,), jnp.int32)
        return Metrics(step=step, loss=None, acc=None, lr=None, layers=add(layers), acts=acts)

    def evaluate(self, states: TrainState) -> dict[str, tuple]:
        """``{split: (loss, accuracy)}`` (each (M,)) on the test split and the validation
        split where there is one, BN in eval mode; on the probe device where there is
        one (on a copy of ``states``, made now, before the caller donates them to the
        next chunk)."""
        self.compile(states, [])
        if self.probe_device is not None:
            copy = jax.block_until_ready(jax.device_put(states, self.probe_device))
            kind, arrays = "eval_beside", self.remote
        else:
            copy, kind, arrays = states, "eval", self.data
        return {
            s: self._compiled[kind, s](copy, arrays[f"{s}_x"], arrays[f"{s}_y"])
            for s in self.splits
        }

    def histograms(self, states: TrainState, bins: int, beside: bool = True) -> dict:
        """For the loggers: ``{site: probe.histogram}`` (each array with a leading member
        axis) of every site's raw values on the probe batch at ``states``; one forward
        pass of the probe batch per member, asked for only at the steps a logger wants
        them. ``beside``: on the probe device where there is one (a copy of ``states``
        made now, before the caller donates them to the next chunk). A future."""
        if beside and self.probe_device is not None:
            states = jax.block_until_ready(jax.device_put(states, self.probe_device))
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
