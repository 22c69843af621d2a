"""Which devices a run uses: the training mesh and the probe device beside it.

A run is M members on D devices. The training mesh has two axes: ``members`` (a
sweep's members split across devices, each device training its share) and ``data``
(each batch split across devices; gradients, the loss and BN's running statistics
averaged over it, BN's batch statistics too with ``norm.sync=true``). A run on one
device has no mesh. With one training device and ``probe.overlap``, a second local
device computes the activation probes and the evaluation beside training (on a CPU:
a second CPU device, i.e. the second core).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

MEMBERS, DATA = "members", "data"  # the mesh axes


def request_cpu_devices(n: int) -> None:
    """Ask JAX for ``n`` CPU devices (a mesh on a CPU, or a probe device beside training).

    Only before JAX's backends start, and only when the user has not set the count
    (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``jax_num_cpu_devices``).
    """
    if n <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        if jax.config.jax_num_cpu_devices < 0:
            jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized (an in-process caller)
        pass


def make_mesh(data: int, members: int) -> Mesh | None:
    """A ``(members, data)`` mesh over the first ``members * data`` local devices, or
    None for a single device."""
    if data * members == 1:
        return None
    devs = np.asarray(jax.local_devices()[: data * members]).reshape(members, data)
    return Mesh(devs, (MEMBERS, DATA))


def probe_device(overlap: bool, mesh: Mesh | None) -> jax.Device | None:
    """The device probes run on beside training: a second local device when training
    uses one, else None (probes inline in the training program)."""
    local = jax.local_devices()
    return local[1] if overlap and mesh is None and len(local) > 1 else None
