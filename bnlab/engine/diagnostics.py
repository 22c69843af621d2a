"""The diagnostics beside the layer statistics: which layers' weights are scale-invariant
(their effective learning rate), and the sharpness probe on its schedule.

Sharpness (Cohen et al. 2021) is the top eigenvalue of the training loss's Hessian
(:func:`bnlab.measure.top_eigenvalue`), measured every ``probe.sharpness_every`` steps
on a fixed set of ``probe.sharpness_batches`` training batches of ``batch_size``
examples, evenly spread over the training set (:func:`fixed_batches`): the loss is
the mean of their batch losses, BN in train mode over each batch as training sees it
(the same noise and dropout masks throughout). With ``parallel.data`` each device
takes its share of every batch, as in training. It runs inside the chunk, for every
member, where the probe's step is a multiple of ``sharpness_every``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnlab import measure
from bnlab.engine.devices import DATA

Array = jax.Array
SHARPNESS_STREAM = 0x73686172  # fold_in tag of the power iteration's start direction


@dataclass(frozen=True)
class Sharpness:
    """The sharpness probe's settings (``probe.sharpness_*``)."""

    every: int
    batches: int
    iters: int

    @classmethod
    def of(cls, probe_cfg: Any) -> Sharpness | None:
        """The settings of ``probe_cfg``, or None where ``sharpness_every`` is 0 (off)."""
        if not probe_cfg.sharpness_every:
            return None
        return cls(int(probe_cfg.sharpness_every), int(probe_cfg.sharpness_batches),
                   int(probe_cfg.sharpness_iters))  # fmt: skip


def fixed_batches(n_train: int, batches: int, batch_size: int) -> np.ndarray:
    """Indices ``(batches, batch_size)`` of the sharpness probe's training examples:
    ``batches * batch_size`` of them evenly spaced over the training set (every class of
    a set stored sorted by class), the same at every probe."""
    total = batches * batch_size
    return ((np.arange(total, dtype=np.int64) * n_train) // total).reshape(batches, batch_size)


def member_sharpness(learner: Any, st: Any, xs: Array, ys: Array, iters: int) -> Array:
    """One member's sharpness at ``st`` (a :class:`~bnlab.engine.step.TrainState` of
    ``learner``'s; not imported here: step imports this module) on the batches ``xs``/``ys`` (leading axis:
    batch); the power iteration starts from a direction drawn from the member's key and
    step, so a resumed run measures what the uninterrupted one did."""
    rngs = learner.rngs(st)

    def loss(params, batch):
        return learner.loss_fn(params, st.batch_stats, batch[0], batch[1], rngs, st.extra)[0]

    key = jax.random.fold_in(jax.random.fold_in(st.key, SHARPNESS_STREAM), st.step)
    return measure.top_eigenvalue(loss, st.params, (xs, ys), key, iters, learner.unroll)


def sharpness_probe(engine: Any, st: Any, t: Array, data: dict) -> dict:
    """``{'sharpness': (members,), 'sharpness_due': bool}`` at the probe after ``t``
    steps of ``engine`` (a :class:`~bnlab.engine.chunk.Engine`); zeros where not due."""
    sh = engine.sharpness
    idx = jnp.asarray(fixed_batches(engine.n_train, sh.batches, engine.batch_size))
    if engine.shards > 1:  # this device's share of every batch
        start = lax.axis_index(DATA) * engine.local_batch
        idx = lax.dynamic_slice_in_dim(idx, start, engine.local_batch, axis=1)
    xs, ys = data["train_x"][idx], data["train_y"][idx]
    fn = engine._members(partial(member_sharpness, engine.learner, iters=sh.iters),
                         ("member", None, None))  # fmt: skip
    due = t % sh.every == 0
    zero = jnp.zeros_like(st.step).astype(jnp.float32)  # per member, typed as members vary
    return {"sharpness": lax.cond(due, lambda: fn(st, xs, ys), lambda: zero),
            "sharpness_due": due}  # fmt: skip


def scale_invariant_layers(net: Any, params: dict) -> list[str]:
    """The layers (as layer statistics name them) whose kernel feeds a normalizer
    directly (``Layout.scale_invariant``): the built-ins' ``layer{i}``, other models'
    module paths."""
    paths = net.layout.scale_invariant if net.layout is not None else ()
    if net.builtin_layers(params):
        return [p.rsplit("/", 1)[0] for p in paths if p.endswith("/linear")]
    return list(paths)
