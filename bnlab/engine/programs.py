"""The compile set: every program an engine runs, lowered and compiled ahead of time.

The programs are the chunk of each length (with the probe device's program for its
snapshots, one per number of probes), the step-0 probe and the evaluations; with the
host loop, its step, probe and permutation programs instead of the chunks. Each
program is handed to a thread pool to compile as soon as it is traced (XLA compiles
outside the GIL), so tracing the next overlaps compiling the last.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from bnlab.engine.step import TrainState


class _Compiling(dict):
    """Lowered programs by key, each handed to ``pool`` to compile as it is set; the
    values are futures of the compiled programs."""

    def __init__(self, pool: ThreadPoolExecutor):
        super().__init__()
        self.pool = pool

    def __setitem__(self, key: tuple, lowered: Any) -> None:
        super().__setitem__(key, self.pool.submit(lowered.compile))


def one_probe(tree: Any) -> Any:
    """The shapes of ``tree`` (leading member axis) as snapshots of one probe."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((a.shape[0], 1, *a.shape[1:]), a.dtype), tree
    )


class Programs(dict):
    """An engine's compiled programs by key: ``('chunk', length)``, ``('snaps', probes)``,
    ``('measure',)`` or ``('layers0',)``, ``('eval', split)`` or ``('eval_beside',
    split)``, and the host loop's ``('perms',)``, ``('step',)``, ``('probe',)``.
    ``engine``: the :class:`~bnlab.engine.chunk.Engine` whose programs these are (not
    imported here: the engine imports this module)."""

    def __init__(self, engine: Any):
        super().__init__()
        self.engine = engine

    def compiled(self, length: int) -> bool:
        """Whether a chunk of ``length`` steps is ready to run."""
        if self.engine.host_loop:  # one set of programs for every length
            return ("step",) in self
        return ("chunk", length) in self

    def compile(self, states: TrainState, lengths: list[int]) -> float:
        """Compile, concurrently, every program not compiled yet for chunks of
        ``lengths``. With a probe device the step-0 probe is its program of one probe and
        the evaluations run there only (two programs fewer at start). Returns the
        seconds it took."""
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            jobs = _Compiling(pool)  # each program compiles while the next one is traced
            self._lower_all(states, lengths, jobs)
            done = {key: job.result() for key, job in jobs.items()}
        self.update(done)
        return time.perf_counter() - start

    def on_probe_device(self, tree: Any) -> Any:
        """The shapes of ``tree``, placed on the probe device."""
        sharding = SingleDeviceSharding(self.engine.probe_device)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            tree)  # fmt: skip

    def _lower_all(self, states: TrainState, lengths: list[int], jobs: dict) -> None:
        e = self.engine
        t0 = jnp.zeros((), jnp.int32)
        pd = e.probe_device
        for n in lengths:
            if self.compiled(n):
                continue
            if e.host_loop:
                e.host_steps.lower(states, jobs)
                break
            orders = e.orders.shapes(e._count(n))
            low = e._chunk_jit.lower(states, t0, e.data, orders, length=n)
            jobs["chunk", n] = low
            if pd is not None:
                self.lower_snaps(self.on_probe_device(low.out_info[2]), jobs)
        if ("measure",) not in self and ("layers0",) not in self:
            if pd is None:
                jobs["measure",] = e._measure_jit.lower(states, e.data["probe_x"])
            else:
                jobs["layers0",] = e._layers0_jit.lower(states)
                self.lower_snaps(self.on_probe_device(one_probe(states.replace(opt_state=None))),
                                 jobs)  # fmt: skip
            for s in e.splits:
                if pd is None:
                    x, y = e.data[f"{s}_x"], e.data[f"{s}_y"]
                    jobs["eval", s] = e._eval_jit.lower(states, x, y)
                else:
                    x, y = e.remote[f"{s}_x"], e.remote[f"{s}_y"]
                    jobs["eval_beside", s] = e._eval_beside_jit.lower(
                        self.on_probe_device(states), x, y
                    )

    def lower_snaps(self, snaps: Any, jobs: dict) -> None:
        """The probe device's activations of ``snaps`` (members, probes), one program
        per number of probes."""
        key = ("snaps", jax.tree.leaves(snaps)[0].shape[1])
        if key not in self and key not in jobs:
            jobs[key] = self.engine._snap_acts_jit.lower(snaps, self.engine.remote["probe_x"])
