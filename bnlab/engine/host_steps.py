"""The chunk's steps dispatched from the host, one compiled step after another.

With ``step_loop=host`` (``auto``: models that convolve, on a CPU) the host runs one
program per step (every ``probe.every``-th followed by its probe) and stacks their
rows as the chunk's scan would: XLA:CPU runs convolutions inside a while loop several
times slower (3.3x for the CNN preset: ``benchmarks/RESULTS.md``). Same numbers
either way (``tests/test_conv.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from bnlab.engine.devices import MEMBERS
from bnlab.engine.metrics import Metrics
from bnlab.engine.programs import one_probe
from bnlab.engine.step import TrainState


class HostSteps:
    """An engine's host-dispatched loop: its three programs (two epochs' permutations,
    one step, one probe) and the loop that runs them, for ``engine`` (the
    :class:`~bnlab.engine.chunk.Engine` that owns it)."""

    def __init__(self, engine: Any, metrics_specs: Metrics):
        e = self.engine = engine
        pm = P(MEMBERS)
        ps = e.seed_spec
        res_specs = dict(step=P(), lr=pm, layers=pm)
        res_specs.update({"snaps": pm} if e.probe_device is not None else
                         {"acts": pm} if e.probes else {})  # fmt: skip
        res_specs.update(dict(ics=pm, ics_due=P()) if metrics_specs.ics is not None else {})
        if metrics_specs.sharpness is not None:
            res_specs.update(sharpness=pm, sharpness_due=P())
        self._perms_jit = jax.jit(e._spmd(e._perms, (ps, P())), static_argnames="steps")
        self._step_jit = jax.jit(e._spmd(e._one, (pm, pm, pm, pm), (pm, P(), ps, P(), P())),
                                 donate_argnums=0)  # fmt: skip
        self._probe_jit = jax.jit(e._spmd(e._probe, res_specs, (pm, P(), pm, ps, P(), P())))

    def lower(self, states: TrainState, jobs: dict) -> None:
        """The loop's programs (and the probe device's activations of one snapshot)."""
        e = self.engine
        t0 = jnp.zeros((), jnp.int32)
        low = self._perms_jit.lower(states, t0, steps=1)
        perms, epoch0 = low.out_info
        step = self._step_jit.lower(states, t0, perms, epoch0, e.data)
        probe = self._probe_jit.lower(states, t0, step.out_info[3], perms, epoch0, e.data)
        jobs["perms",], jobs["step",], jobs["probe",] = low, step, probe
        snaps = probe.out_info.get("snaps")
        if snaps is not None:
            e.programs.lower_snaps(e.programs.on_probe_device(one_probe(snaps)), jobs)

    def chunk(self, states: TrainState, t0: int, length: int) -> tuple[TrainState, Metrics]:
        """The engine's chunk as a loop on the host. The permutations come two epochs at
        a time (the step's and the next, which the probe's batch may reach), so every
        program is one whatever the chunk's length."""
        e = self.engine
        run = lambda name: e.programs[name,]  # noqa: E731
        spe = e.steps_per_epoch
        rows, acts = [], []
        t, epoch = t0, None
        for _ in range(length // e.every):
            losses, accs = [], []
            for _ in range(e.every):
                if t // spe != epoch:
                    epoch = t // spe
                    perms, epoch0 = run("perms")(states, np.int32(t))
                states, loss, acc, grads = run("step")(states, np.int32(t), perms, epoch0,
                                                       e.data)  # fmt: skip
                losses.append(loss), accs.append(acc)
                t += 1
            res = run("probe")(states, np.int32(t), grads, perms, epoch0, e.data)
            res.update(loss=jnp.stack(losses), acc=jnp.stack(accs))
            snaps = res.pop("snaps", None)
            if snaps is not None:  # this interval's probe, beside the next interval
                snap = jax.tree.map(lambda a: a[:, None], snaps)
                acts.append(e.programs["snaps", 1](jax.device_put(snap, e.probe_device),
                                                   e.remote["probe_x"]))  # fmt: skip
            rows.append(res)
        out = jax.tree.map(lambda *r: jnp.stack(r), *rows)
        metrics, _ = e._metrics(out)
        if acts:
            on_probe = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *acts)
            metrics = metrics.replace(acts=on_probe)
        return states, metrics
