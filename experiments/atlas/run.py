"""The normalization atlas: models x normalizers x lrs x seeds, one command, one report.

    uv run python experiments/atlas/run.py                 # scale=cpu, hydra/launcher=parallel
    uv run python experiments/atlas/run.py --scale tiny    # the test's: 2 x 3 x 2 lrs x 2 seeds
    uv run python experiments/atlas/run.py --scale full --launcher slurm \\
        hydra.launcher.partition=cpu                       # a cluster (or --launcher ray_cluster)

One Hydra multirun over ``+atlas_model=<models> norm=<normalizers>`` (the model
presets of ``conf/atlas_model/``): one job per (model, normalizer), each a vectorized
run of every lr x seed (``sweep.lr``, ``sweep.seeds``: one compiled program), under
the launcher given (``parallel``: joblib on this machine, one job per core). Then
:mod:`report` turns the records into ``per_seed.csv``, ``summary.csv``,
``verdicts.csv``, ``figures/atlas.png``, ``report.md`` and ``report.html``. Extra
arguments after the options are Hydra overrides for every job. See README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import report  # noqa: E402

MODELS = ["sigmoid_mlp", "relu_mlp", "cnn", "vgg", "resnet20"]
NORMS = ["none", "bn", "bn_noaffine", "bn_nostatgrad", "layer_norm", "group_norm", "rms_norm",
         "batch_renorm"]  # fmt: skip
# what each scale runs; "cuts" says what the cpu scale leaves out of the full one
SCALES = {
    "tiny": dict(models=["relu_mlp", "cnn"], norms=["none", "bn", "layer_norm"], lrs=[0.1, 1.0],
                 seeds=2, data="digits", steps=200, validation=300, target=0.8, probes=20,
                 fast_compile=["relu_mlp", "cnn"]),
    "cpu": dict(models=MODELS[:3], norms=NORMS, lrs=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0], seeds=5,
                data="digits", steps=300, validation=300, target=0.8,
                fast_compile=["sigmoid_mlp", "relu_mlp"]),
    "full": dict(models=[*MODELS[:2], *(f"{m}_full" for m in MODELS[2:])], norms=NORMS, lrs=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
                 seeds=5, data="fashion_mnist", steps=10000, validation=5000, target=0.85,
                 fast_compile=[]),
}  # fmt: skip
# fast_compile: the models compiled with less XLA optimization (as experiments/common.py's
# smoke runs; XLA's CPU backend compiles in about 60% of the time without LLVM's
# optimizations): the MLPs, whose few hundred steps cost less than compiling them. Not
# the conv nets of the cpu scale: their vmapped members' convolutions are grouped ones,
# which XLA:CPU runs as plain loops, and unoptimized those loops ran 30 steps of the
# CNN's 30 members in over 4 minutes against ~1 minute optimized.
FAST_XLA_FLAGS = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
# the conv nets of conf/atlas_model/ are narrower than the presets; <model>_full are the
# presets' widths (the full scale)
CUTS = ("scale=cpu cuts from full: two of the five models (VGG and ResNet-20: compiling and "
        "running their 30-member programs takes XLA:CPU too long for the 60-minute budget), "
        "data=digits (8x8 images, 1,500 train, 300 held out for validation) instead of "
        "Fashion-MNIST, 300 SGD steps instead of 10,000, 6 lrs (0.01-3) instead of 8, and a "
        "narrower CNN (16/32 channels and 64 units); the MLPs, every normalizer and 5 seeds "
        "stay.")  # fmt: skip


def groups(s: dict, fast_flag: bool | None, sweep_dir: Path) -> list[tuple[list, bool, Path]]:
    """(models, compiled fast?, sweep dir) per multirun: one where every model compiles
    alike, else the fast-compiled models in ``fast_compile/``, the others in ``optimized/``."""
    models = s["models"]
    fast = [m for m in models if (m in s["fast_compile"] if fast_flag is None else fast_flag)]
    slow = [m for m in models if m not in fast]
    if not fast or not slow:
        return [(models, bool(fast), sweep_dir)]
    return [(fast, True, sweep_dir / "fast_compile"), (slow, False, sweep_dir / "optimized")]


def overrides(s: dict, scale: str) -> list[str]:
    steps = s["steps"]
    every = max(1, steps // s.get("probes", 50))  # probes; evaluations every 5 probes
    lrs = ",".join(f"{v:g}" for v in s["lrs"])
    return [
        f"norm={','.join(s['norms'])}",
        f"data={s['data']}", f"data.validation={s['validation']}", f"steps={steps}",
        f"eval_every={every * 5}", f"probe.every={every}", f"probe.ics_every={every * 5}",
        f"chunk_steps={every * 5}", f"sweep.lr=[{lrs}]", f"sweep.seeds={s['seeds']}",
        # Batch Renorm: the paper's warm-up (5k, then r_max at 40k, d_max at 25k, of the
        # 50k steps of Fig. 1) scaled to the run's length
        f"norm.renorm_warmup={steps // 10}", f"norm.r_max_steps={steps * 4 // 5}",
        f"norm.d_max_steps={steps // 2}",
        # sharpness (the Hessian's top eigenvalue, beside 2/lr) once, at the last step
        f"probe.sharpness_every={steps}",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="experiments/atlas/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--scale", choices=list(SCALES), default="cpu")
    ap.add_argument("--launcher", default="parallel", help="parallel | ray_cluster | slurm")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for runs/ and the report")
    ap.add_argument("--compile-cache", default=None)
    ap.add_argument("--no-train", action="store_true", help="only rewrite the report")
    ap.add_argument(
        "--fast-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile every model with less XLA optimization, or none (default: the "
        "scale's fast_compile models: the MLPs at cpu, all at tiny, none at full)",
    )
    args, extra = ap.parse_known_args()
    s = SCALES[args.scale]
    out = args.out.resolve()
    sweep_dir = out / "runs" / args.scale
    over = overrides(s, args.scale)
    if args.scale == "cpu":
        print(CUTS)
    if not args.no_train:
        t0 = time.perf_counter()
        for models, fast, where in groups(s, args.fast_compile, sweep_dir):
            cmd = [sys.executable, "-m", "bnlab.train", "-m", "--config-dir", str(HERE / "conf"),
                   f"+atlas_model={','.join(models)}", *over, f"hydra/launcher={args.launcher}",
                   f"hydra.sweep.dir={where}", "progress=false", "figure=false", *extra]  # fmt: skip
            if args.compile_cache:
                cmd.append(f"compile_cache={args.compile_cache}")
            print("python -m bnlab.train -m " + " ".join(cmd[4:]), flush=True)
            env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
            if fast:
                env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *FAST_XLA_FLAGS]).strip()
            t1 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, env=env)
            if res.returncode:
                raise SystemExit(f"bnlab.train failed (exit {res.returncode})")
            print(f"{','.join(models)}: trained in {time.perf_counter() - t1:.0f} s", flush=True)
        wall = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "timing.log", "a") as f:
            f.write(f"{args.scale}\t{args.launcher}\t{wall:.0f} s\t{' '.join(over)}\n")
        print(f"trained in {wall:.0f} s", flush=True)
    from bnlab.analysis.runs import load_sweep

    sweep = load_sweep(sweep_dir, warn=False)
    ps, pl = report.tables(sweep, s["target"])
    setup = (f"scale={args.scale}: {len(s['models'])} models x {len(s['norms'])} normalizers x "
             f"{len(s['lrs'])} lrs ({', '.join(f'{v:g}' for v in s['lrs'])}) x {s['seeds']} "
             f"seeds, data={s['data']}, {s['steps']} SGD steps, batch 60, launcher "
             f"{args.launcher}.")  # fmt: skip
    paths = report.write(ps, out / "report" / args.scale, title="The normalization atlas",
                         setup=setup, layers=pl)  # fmt: skip
    for p in paths.values():
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
