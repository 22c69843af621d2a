"""Data-parallel training over the local devices, with cross-device BN statistics.

``parallel.data=N`` (``0``: every local device) splits each global batch of
``batch_size`` examples evenly over N devices of a one-axis mesh (axis ``data``).
The compiled chunk of :class:`bnlab.loop.Trainer` runs inside :func:`jax.shard_map`
over that mesh; params, optimizer state, running statistics, the dataset and the
probe batch are replicated, and every device draws the same epoch permutation and
takes its own slice of the global batch (device i: examples ``i*b .. (i+1)*b - 1`` of
the batch, ``b = batch_size // N``).

What crosses devices, each step:

- **BN statistics.** ``norm.sync=true`` (default): the BN module's ``axis_name`` is
  the mesh axis, so the batch mean and the centred second moment are averaged
  across devices (:func:`bnlab.norm.batch_stats`) and every device normalizes with
  the statistics of the whole global batch: the same numbers as one device with the
  whole batch. ``norm.sync=false``: each device normalizes with its own
  statistics, which is ghost BN with a ghost batch of the per-device size ``b``.
  With ``norm.ghost_batch_size`` set, ghost groups stay on their device (it must
  divide ``b``), whatever ``norm.sync`` says, so the run equals the single-device
  ghost BN run.
- **Loss and gradients.** The step differentiates the global batch's mean loss
  (``pmean`` of the per-device means, all devices holding equally many examples,
  flax#2417), so the gradient is the average of the per-device gradients.
- **Running statistics.** The running-average update is averaged across devices
  (flax#877). With sync BN every device already holds the same update; without, the
  average of per-device updates is exactly ghost BN's update (the mean of the ghost
  statistics), so the running statistics stay identical on every device.

Probes and evaluation run on the replicated state and the replicated probe batch /
test split, so they compute what a single device computes, and the run record is the
same as a single-device run's except for the ``devices`` field of the summary.
Running on GPUs needs nothing more; on CPU, simulate N devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX starts).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bnlab import loop

AXIS = "data"  # the mesh axis the batch is split over


def device_count(requested: int) -> int:
    """How many devices ``parallel.data=requested`` means (0: all local devices)."""
    available = jax.local_device_count()
    if requested < 0:
        raise ValueError(f"parallel.data={requested} must be >= 0 (0: all local devices)")
    if requested > available:
        raise ValueError(
            f"parallel.data={requested} asks for more devices than the {available} "
            f"local {jax.default_backend()} device(s); on CPU, simulate more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={requested}"
        )
    return requested or available


def request_cpu_devices(n: int) -> None:
    """Ask JAX for ``n`` CPU devices, so a probe device can run beside the training one.

    Only before JAX's backends start, and only when the user has not set the count
    (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``jax_num_cpu_devices``);
    otherwise a no-op (:func:`probe_device` then finds what there is).
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        if jax.config.jax_num_cpu_devices < 0:
            jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized (an in-process caller)
        pass


def probe_device(overlap: bool, devices: int) -> jax.Device | None:
    """The device activation probes run on beside training (``probe.overlap``): a second
    local device when training uses one device, else None (probes inline)."""
    local = jax.local_devices()
    return local[1] if overlap and devices == 1 and len(local) > 1 else None


def stats_axis(norm_cfg: Any, devices: int) -> str | None:
    """The BN module's ``axis_name``: the mesh axis for sync BN, else None (local stats)."""
    if devices > 1 and norm_cfg.sync and norm_cfg.ghost_batch_size is None:
        return AXIS
    return None


def make_mesh(devices: int) -> Mesh:
    """A one-axis mesh (``data``) over the first ``devices`` local devices."""
    return Mesh(np.asarray(jax.local_devices()[:devices]), (AXIS,))


class DataParallelTrainer(loop.Trainer):
    """:class:`bnlab.loop.Trainer` with its compiled functions sharded over ``mesh``."""

    def __init__(self, *args: Any, mesh: Mesh, **kw: Any):
        self.mesh = mesh
        self._replicated = NamedSharding(mesh, P())
        super().__init__(*args, axis_name=AXIS, shards=mesh.size, **kw)

    def place(self, tree: Any) -> Any:
        """Replicate ``tree`` on every device of the mesh."""
        return jax.device_put(tree, self._replicated)

    def _spmd(self, fn, n_args: int):
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(),) * n_args, out_specs=P())

    def _compile(self) -> None:
        def chunk(state, data, length):
            return self._spmd(partial(self._chunk, length=length), 2)(state, data)

        self._chunk_jit = jax.jit(chunk, static_argnames="length", donate_argnums=0)
        self._measure_jit = jax.jit(self._spmd(self._measure, 3))
        self._evaluate_jit = jax.jit(self._spmd(self._evaluate, 3))


def make_trainer(
    model_cfg: Any,
    norm_cfg: Any,
    ds: Any,
    tx: Any,
    schedule: Any,
    *,
    devices: int,
    batch_size: int,
    **kw: Any,
) -> loop.Trainer:
    """The model and trainer for ``devices`` devices: the plain single-device
    :class:`~bnlab.loop.Trainer` for one, a :class:`DataParallelTrainer` for more.

    Raises ``ValueError`` (one line) when the batch does not split evenly.
    """
    if devices > 1:
        if batch_size % devices:
            raise ValueError(
                f"batch_size={batch_size} must be divisible by parallel.data={devices} "
                "(every device takes an equal share of the batch)"
            )
        ghost, local = norm_cfg.ghost_batch_size, batch_size // devices
        if norm_cfg.name != "none" and ghost is not None and local % ghost:
            raise ValueError(
                f"norm.ghost_batch_size={ghost} must divide the per-device batch "
                f"{local} (batch_size={batch_size} over {devices} devices)"
            )
    model = loop.make_model(
        model_cfg, norm_cfg, ds.num_classes, axis_name=stats_axis(norm_cfg, devices)
    )
    if devices == 1:
        return loop.Trainer(model, tx, schedule, ds, batch_size=batch_size, **kw)
    return DataParallelTrainer(
        model, tx, schedule, ds, batch_size=batch_size, mesh=make_mesh(devices), **kw
    )
