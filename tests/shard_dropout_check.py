"""Dropout under ``parallel.data=2``, run by tests/test_real_models.py in its own process
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``). For each dropout CNN: on the
same examples at the same state, the two data shards draw different masks in training,
the NNX streams stored in the model come back with the keys they went in with (their
counts advanced alike on both shards), and probes (``probe=True`` keys) are equal on
both shards. Then a short real 2-device run of the stored-rngs CNN finishes. Prints
``OK`` or fails."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from trainer import COMPILE_CACHE, QUICK, ROOT, engine_for, train

from bnlab.engine.devices import DATA, MEMBERS
from bnlab.engine.step import unstack

OWN = ["model=own", f"import_path=[{ROOT / 'tests'}]", "batch_size=32", "data.probe_size=64",
       "data.flatten=false", "parallel.data=2"]  # fmt: skip

jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

for target in ("StoredRngsCNN", "CallRngsCNN", "LinenDropoutCNN"):
    e, states, _ = engine_for([*QUICK, *OWN, f"model._target_=real_models.{target}"],
                              probes=False, devices=(2, 1))  # fmt: skip
    lrn, st = e.learner, unstack(states, 0)
    x = jnp.asarray(e.data["train_x"][:16])

    def per_shard(st, x, probe, lrn=lrn):
        logits, _, extra, _ = lrn.net.apply_state(st.params, st.batch_stats, x, train=True,
                                                  extra=st.extra, **lrn.rngs(st, probe))  # fmt: skip
        return logits[None], jax.tree.map(lambda v: v[None], extra)

    for probe in (False, True):
        run = jax.jit(jax.shard_map(lambda st, x, p=probe: per_shard(st, x, p), mesh=e.mesh,
                                    in_specs=(P(), P()), out_specs=P((MEMBERS, DATA))))  # fmt: skip
        logits, extra = run(st, x)
        assert logits.shape[0] == 2, logits.shape
        if probe:
            np.testing.assert_array_equal(logits[0], logits[1])
        else:
            assert not np.allclose(logits[0], logits[1]), target
        for a, b in zip(jax.tree.leaves(extra), jax.tree.leaves(st.extra), strict=True):
            np.testing.assert_array_equal(a[0], a[1])  # carried state: the same on each shard
            if b.dtype == jnp.uint32 and b.ndim == 1:  # a stored key: as it went in
                np.testing.assert_array_equal(a[0], b)

out = Path(sys.argv[1])
(summary,) = train([*QUICK, *OWN, "model._target_=real_models.StoredRngsCNN", "steps=4",
                    "chunk_steps=4", "probe.every=2", "eval_every=4"], out)  # fmt: skip
assert summary["status"] == "finished", summary
print("OK")
