"""What recording sites costs a run (issue 22, point 3): interception against Flax's
``capture_intermediates``, measured where it matters, on a run's probes.

Two linen models with a hard-coded ``nn.BatchNorm`` (bnlab's BN substituted), trained
on digits through ``model._target_``: the CNN of ``benchmarks/capture.py`` (conv-BN-relu
x2, dense-BN-relu, dense) and an MLP (dense-BN-relu x2, dense). Per model, in
alternating rounds (medians):

- ``run, default probes`` / ``run, no probes``: one chunk of ``--steps`` training steps
  with a probe every 50 (bnlab's engine, the default sites: norm in/out and dense/conv
  inputs, by interception) and the same chunk built without probes; their difference is
  everything the probes cost the run;
- ``probe step``: one whole probe of the module outputs (``probe.sites=[*/out]``: the
  forward pass on the probe batch and every activation statistic), with bnlab's
  interception and with Flax's ``capture_intermediates`` feeding the same statistics.

    uv run python benchmarks/probe_cost.py [--rounds 3] [--steps 200] [--calls 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from capture import LinenCNN  # noqa: E402


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((x.shape[0], -1))
        for w in (64, 64):
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(w)(x)))
        return nn.Dense(10)(x)


MODELS = {"cnn": ("LinenCNN", LinenCNN, ["data.flatten=false"]), "mlp": ("LinenMLP", LinenMLP, [])}


def engine(model: str, steps: int, probes: bool, sites: str | None = None):
    from hydra import compose, initialize_config_dir

    from bnlab import config
    from bnlab.run.build import build_engine, load_data

    name, _, extra = MODELS[model]
    over = ["data=digits", "model=own", f"model._target_=probe_cost.{name}",
            f"import_path=[{ROOT / 'benchmarks'}]", "batch_size=60", "probe.every=50",
            f"steps={steps}", f"chunk_steps={steps}", f"eval_every={steps}",
            "compile_cache=/tmp/bnlab-test-compile-cache",
            *extra, *([f"probe.sites=[{sites}]"] if sites else [])]  # fmt: skip
    config.register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = config.typed(compose("train", overrides=over))
    config.check(cfg, 1)
    ds = load_data(cfg)
    e = build_engine(cfg, ds, 1, 1, probes=probes)
    return e, e.init([0], [cfg.optimizer.lr], ds.train_x[:2])


def run_time(model: str, steps: int, probes: bool) -> float:
    e, st = engine(model, steps, probes)
    st, m = e.chunk(st, 0, steps)  # compiles
    jax.block_until_ready((st, m))
    t = time.perf_counter()
    jax.block_until_ready(e.chunk(st, steps, steps))
    return time.perf_counter() - t


def probe_step(model: str, way: str, calls: int) -> float:
    e, states = engine(model, 50, True, sites="*/out")
    lrn = e.learner
    st = jax.tree.map(lambda a: a[0], states)
    x = e.data["probe_x"]
    if way == "interception":
        fn = jax.jit(lrn.activations)
    else:
        from bnlab import measure

        module = MODELS[model][1]()

        def fn(st, x):
            _, upd = module.apply({"params": st.params, "batch_stats": st.batch_stats}, x,
                                  train=True, capture_intermediates=True,
                                  mutable=["intermediates", "batch_stats"])  # fmt: skip
            flat = jax.tree_util.tree_flatten_with_path(upd["intermediates"])[0]
            sites = {"/".join(str(k.key) for k in p[:-2]) + "/out": v for p, v in flat}
            return measure.activation_stats(sites, lrn.qs, lrn.units, {}, lrn.sample,
                                            lrn.sample_seed)  # fmt: skip

        fn = jax.jit(fn)
    out = fn(st, x)
    jax.block_until_ready(out)
    runs = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(fn(st, x))
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), len(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--calls", type=int, default=30)
    a = p.parse_args()
    jax.config.update("jax_compilation_cache_dir", "/tmp/bnlab-test-compile-cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    res: dict = {}
    for _ in range(a.rounds):
        for model in MODELS:
            for probes in (True, False):
                key = (model, "run, default probes" if probes else "run, no probes")
                res.setdefault(key, []).append((run_time(model, a.steps, probes), 0))
            for way in ("interception", "flax capture"):
                res.setdefault((model, f"probe step [*/out], {way}"), []).append(
                    probe_step(model, way, a.calls)
                )
            print(res, file=sys.stderr, flush=True)
    print(f"| model | what | sites | median ms ({a.rounds} rounds) |\n|---|---|---|---|")
    for (model, what), rs in res.items():
        print(
            f"| {model} | {what} | {rs[0][1] or ''} | {1e3 * statistics.median(r[0] for r in rs):.1f} |"
        )


if __name__ == "__main__":
    main()
