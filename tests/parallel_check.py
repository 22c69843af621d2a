"""Multi-device equivalence checks, run by tests/test_parallel.py in its own process.

``python tests/parallel_check.py OUT_DIR`` needs
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in its environment (JAX reads it
once, at start-up). It prints one JSON object: the largest absolute differences
between 4-device and single-device computations of the same 64 examples, and the
run directories of a short real training run on 4 devices and on one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from omegaconf import OmegaConf
from trainer import COMPILE_CACHE, QUICK, compose

from bnlab import data, loop, parallel
from bnlab.train import train_and_evaluate

DEVICES, BATCH = 4, 64


def max_err(a, b) -> float:
    errs = jax.tree.map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))), a, b)
    return max(jax.tree.leaves(errs), default=0.0)


def compare(model: str, sync: bool) -> dict[str, float]:
    """One training step on the same 64 examples: 4 devices vs one device.

    sync: 4-device sync BN vs single-device BN over the 64. Not sync: 4-device
    per-device BN vs single-device ghost BN with a ghost batch of 64 / 4 = 16.
    """
    # a probe batch ghost BN can split (the trainer checks it; these runs never probe)
    over = [*QUICK, f"model={model}", f"batch_size={BATCH}", "data.probe_size=256"]
    cfg4 = compose([*over, f"norm.sync={str(sync).lower()}"])
    cfg1 = compose(over if sync else [*over, f"norm.ghost_batch_size={BATCH // DEVICES}"])
    ds = data.load(**OmegaConf.to_container(cfg1.data))
    kw = dict(batch_size=BATCH, chunk_steps=cfg1.chunk_steps, probe_cfg=cfg1.probe)
    tx, sched = loop.make_optimizer(cfg1.optimizer, cfg1.steps)
    t1 = parallel.make_trainer(cfg1.model, cfg1.norm, ds, tx, sched, devices=1, **kw)
    t4 = parallel.make_trainer(cfg4.model, cfg4.norm, ds, tx, sched, devices=DEVICES, **kw)
    assert isinstance(t4, parallel.DataParallelTrainer) and t4.mesh.size == DEVICES

    x, y = jnp.asarray(ds.train_x[:BATCH]), jnp.asarray(ds.train_y[:BATCH])
    state = loop.init_state(t1.model, tx, x[:2], seed=1)
    # one step first, so that the compared step starts from non-trivial running stats
    state = jax.jit(t1._step)(state, jnp.asarray(ds.train_x[BATCH : 2 * BATCH]),
                              jnp.asarray(ds.train_y[BATCH : 2 * BATCH]))[0]  # fmt: skip
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def forward(model, xb):
        return model.apply(variables, xb, train=True, mutable=["batch_stats"])[0]

    spmd = lambda f, ins, outs: jax.jit(  # noqa: E731
        jax.shard_map(f, mesh=t4.mesh, in_specs=ins, out_specs=outs)
    )
    logits1 = jax.jit(forward, static_argnums=0)(t1.model, x)
    logits4 = spmd(lambda xb: forward(t4.model, xb), P(parallel.AXIS), P(parallel.AXIS))(x)
    # the other statistics (sync: ghost 16; not sync: the whole 64), to show they differ
    other = compose([*over, f"norm.ghost_batch_size={BATCH // DEVICES}"] if sync else over)
    other_model = loop.make_model(other.model, other.norm, ds.num_classes)
    logits_other = jax.jit(forward, static_argnums=0)(other_model, x)
    new1, grads1, loss1, acc1 = jax.jit(t1._step)(state, x, y)
    new4, grads4, loss4, acc4 = spmd(t4._step, (P(), P(parallel.AXIS), P(parallel.AXIS)), P())(
        t4.place(state), x, y
    )
    return dict(
        outputs=max_err(logits1, logits4),
        running_stats=max_err(new1.batch_stats, new4.batch_stats),
        grads=max_err(grads1, grads4),
        params_after_step=max_err(new1.params, new4.params),
        loss=max_err(loss1, loss4),
        # the running stats did move this step (else comparing them proves little)
        running_stats_moved=max_err(state.batch_stats, new1.batch_stats),
        outputs_vs_other_stats=max_err(logits_other, logits4),
    )


def real_runs(out: Path) -> dict[str, str]:
    """A short real training run on 4 devices (sync BN) and on one, same seed."""
    common = [*QUICK, "steps=200", "chunk_steps=100", "eval_every=100", f"batch_size={BATCH}"]
    dirs = {}
    for devices in (DEVICES, 1):
        run = out / f"devices{devices}"
        train_and_evaluate(compose([*common, f"parallel.data={devices}"]), run)
        dirs[str(devices)] = str(run)
    return dirs


def main() -> None:
    out = Path(sys.argv[1])
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if jax.device_count() != DEVICES:
        sys.exit(f"needs XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}")
    result = {
        f"{model}_{'sync' if sync else 'unsync'}": compare(model, sync)
        for model in ("mlp", "cnn")
        for sync in (True, False)
    }
    result["auto_devices"] = parallel.device_count(0)
    result["runs"] = real_runs(out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
