"""Multi-device checks, run by tests/test_parallel.py and tests/test_engine.py in their
own process: ``python tests/parallel_check.py OUT_DIR`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in its environment (JAX reads it
once, at start-up). Prints one JSON object:

- ``step``: the largest absolute differences between one training step on 4 devices
  and on one device, on the same 64 examples (MLP and CNN; sync and per-device BN);
- ``runs``: the run directories of a short real run on 4 devices and on one;
- ``combos``: for every combination of sweep axes, devices, probes, norms and models
  in ``COMBOS``, each member's record directory and the single run it must equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from trainer import COMPILE_CACHE, QUICK, compose, engine_for, train

from bnlab.engine.devices import DATA
from bnlab.engine.step import unstack
from bnlab.models import build_network

DEVICES, BATCH = 4, 64
SMALL = [*QUICK, "steps=100", "chunk_steps=50", "probe.every=25", "eval_every=50",
         "checkpoint_every=50", "model.features=[16,16]", "batch_size=32", "data.probe_size=160",
         "probe.landscape_steps=[0.5,2]"]  # fmt: skip
# Two BN variants, so that combinations share their single runs: noisy BN with ICS and
# sharpness probes, and ghost BN with per-device statistics
NOISY = ["norm=bn_noisy", "probe.ics_every=50", "probe.sharpness_every=50"]
GHOST = ["norm=bn_ghost", "norm.ghost_batch_size=8", "norm.sync=false"]
# A model of the user's, by _target_: NNX, flax.nnx.BatchNorm hard-coded (bnlab's substituted)
TARGET = ["model=own", "model._target_=own_models.NNXFlaxBN", "+model.din=64",
          f"import_path=[{Path(__file__).parent}]"]  # fmt: skip
# (name, overrides, devices as "data x members"): every sweep axis, device layout, probe
# placement and BN variant appears, and each in more than one combination
COMBOS = [
    ("lr_seeds_overlap_ics_noisy", [*NOISY, "sweep.lr=[0.05,0.5]", "sweep.seeds=2",
                                    "probe.overlap=true"], "1x1"),
    ("lr_seeds_data4_ics_noisy", [*NOISY, "sweep.lr=[0.05,0.5]", "sweep.seeds=2"], "4x1"),
    ("seeds_members2_data2_ics_noisy", [*NOISY, "sweep.seeds=2"], "2x2"),
    ("lr_members4_ghost_diverging", [*GHOST, "sweep.lr=[0.05,0.1,0.5,1e6]"], "1x4"),
    ("lr_seeds_members2_data2_ghost", [*GHOST, "sweep.lr=[0.05,0.5]", "sweep.seeds=2"], "2x2"),
    ("single_data4_ghost_overlap", [*GHOST, "probe.overlap=true"], "4x1"),
    ("target_nnx_lr_members2_data2", [*TARGET, "sweep.lr=[0.05,0.5]"], "2x2"),
]  # fmt: skip


def max_err(a, b) -> float:
    errs = jax.tree.map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))), a, b)
    return max(jax.tree.leaves(errs), default=0.0)


def compare_step(model: str, sync: bool) -> dict[str, float]:
    """One training step on the same 64 examples: 4 devices vs one device.

    sync: 4-device sync BN vs single-device BN over the 64. Not sync: 4-device
    per-device BN vs single-device ghost BN with a ghost batch of 64 / 4 = 16.
    """
    over = [*QUICK, f"model={model}", f"batch_size={BATCH}", "data.probe_size=256"]
    e4, _, _ = engine_for([*over, f"norm.sync={str(sync).lower()}"], devices=(DEVICES, 1))
    ghost = [] if sync else [f"norm.ghost_batch_size={BATCH // DEVICES}"]
    e1, states, cfg1 = engine_for([*over, *ghost])
    assert e4.mesh is not None and e4.mesh.size == DEVICES
    x, y = e1.data["train_x"][:BATCH], e1.data["train_y"][:BATCH]
    state = unstack(states, 0)
    # one step first, so that the compared step starts from non-trivial running stats
    state = jax.jit(e1.learner.train_step)(state, e1.data["train_x"][BATCH : 2 * BATCH],
                                   e1.data["train_y"][BATCH : 2 * BATCH])[0]  # fmt: skip

    def forward(net, xb):
        return net.apply(state.params, state.batch_stats, xb, train=True)[0]

    spmd = lambda f, ins, outs: jax.jit(  # noqa: E731
        jax.shard_map(f, mesh=e4.mesh, in_specs=ins, out_specs=outs)
    )
    logits1 = jax.jit(forward, static_argnums=0)(e1.learner.net, x)
    logits4 = spmd(lambda xb: forward(e4.learner.net, xb), P(DATA), P(DATA))(x)
    # the other statistics (sync: ghost 16; not sync: the whole 64), to show they differ
    other = compose([*over, f"norm.ghost_batch_size={BATCH // DEVICES}"] if sync else over)
    from bnlab.config import typed

    other = typed(other)
    other_net = build_network(other.model, other.norm, 10)
    logits_other = jax.jit(forward, static_argnums=0)(other_net, x)
    new1, (loss1, _, grads1) = jax.jit(e1.learner.train_step)(state, x, y)
    new4, (loss4, _, grads4) = spmd(e4.learner.train_step, (P(), P(DATA), P(DATA)), P())(
        state, x, y
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
    common = [*QUICK, "steps=200", "chunk_steps=100", "eval_every=100", f"batch_size={BATCH}",
              "probe.overlap=false"]  # fmt: skip
    dirs = {}
    for devices in (DEVICES, 1):
        run = out / f"devices{devices}"
        train([*common, f"parallel.data={devices}"], run)
        dirs[str(devices)] = str(run)
    return dirs


def combos(out: Path) -> dict[str, list[list[str]]]:
    """Every combination in COMBOS, and the single runs its members must equal."""
    singles: dict[tuple, Path] = {}

    def small(over: list[str]) -> list[str]:  # an own model takes none of the MLP's keys
        own = "model=own" in over
        return [o for o in SMALL if not (own and o.startswith("model."))]

    def single(over: list[str], lr: float, seed: int) -> Path:
        # the member as a run of its own: one device, no sweep, inline probes
        base = tuple(o for o in over if not o.startswith(("sweep.", "probe.overlap")))
        key = (base, lr, seed)
        if key not in singles:
            run = out / "single" / str(len(singles))
            train([*small(over), *base, f"optimizer.lr={lr}", f"seed={seed}",
                   "probe.overlap=false"], run)  # fmt: skip
            singles[key] = run
        return singles[key]

    result = {}
    for name, over, dev in COMBOS:
        data_dev, mem_dev = dev.split("x")
        run = out / "combo" / name
        extra = [f"parallel.data={data_dev}", f"parallel.members={mem_dev}"]
        summaries = train([*small(over), *over, *extra], run)
        cfg = typed_cfg([*small(over), *over])
        members = [(lr, s) for lr in cfg.lrs for s in cfg.seeds]
        pairs = []
        for i, (lr, seed) in enumerate(members):
            member_dir = run / str(i) if cfg.is_sweep else run
            pairs.append([str(member_dir), str(single(over, lr, seed)),
                          summaries[i]["status"]])  # fmt: skip
        result[name] = pairs
    return result


def typed_cfg(over):
    from bnlab.config import typed

    return typed(compose(over))


def main() -> None:
    out = Path(sys.argv[1])
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    if jax.device_count() != DEVICES:
        sys.exit(f"needs XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}")
    what = sys.argv[2] if len(sys.argv) > 2 else "all"
    result = {}
    if what in ("all", "step"):
        result["step"] = {
            f"{model}_{'sync' if sync else 'unsync'}": compare_step(model, sync)
            for model in ("mlp", "cnn")
            for sync in (True, False)
        }
        result["runs"] = real_runs(out)
    if what in ("all", "combos"):
        result["combos"] = combos(out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
