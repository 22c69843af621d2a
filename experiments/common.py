"""What the reproductions in ``experiments/`` share: running bnlab, reading runs back.

Each experiment's ``run.py`` trains with ``python -m bnlab.train -m ...`` (a Hydra
multirun: one process, jobs in order) into ``<out>/runs/<group>/<job>``, then reads
the runs back with :mod:`bnlab.analysis.runs`, draws figures with :mod:`bnlab.analysis.plot` into
``<out>/figures`` and writes ``<out>/summary.csv``. ``<out>`` is the experiment's own
folder unless ``--out`` says otherwise (the smoke tests write into a temp dir).
Runs resume: running the command again skips finished jobs and redraws.

**Seeds and learning rates.** Every job is one vectorized run of ``sweep.seeds``
seeds x ``sweep.lr`` learning rates (:func:`grid`: 5 seeds and the experiment's lrs;
``--smoke``: 2 seeds, 2 lrs), with a validation split (``data.validation``) that
chooses the "best lr" (:func:`best_lr`); test numbers are only reported. Numbers are
means over seeds with a 95% Student-t interval (n >= 5) or the min-max range (n < 5),
:func:`bnlab.analysis.stats.aggregate`; :class:`Results` writes them as markdown tables to
``<out>/results.md``, which the READMEs quote. Each training command's wall time is
appended to ``<out>/timing.log``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bnlab.analysis import plot  # noqa: E402
from bnlab.analysis.runs import Sweep, load_sweep  # noqa: E402
from bnlab.analysis.stats import aggregate, format_interval  # noqa: E402

SEEDS = 5  # replicates of every configuration (one vectorized run)
SMOKE_SEEDS = 2
VALIDATION = 5000  # training examples held out to choose the lr (digits: SMOKE_VALIDATION)
SMOKE_VALIDATION = 300
# --smoke: XLA's CPU backend compiles bnlab's programs in about 60% of the time without
# LLVM's optimizations (the smoke runs are a few steps: compiling is most of their cost)
SMOKE_XLA_FLAGS = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]


def parse_args(name: str, doc: str | None = None, extra=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"experiments/{name}/run.py", description=doc)
    if extra is not None:
        extra(ap)
    ap.add_argument("--smoke", action="store_true", help="a few steps on data=digits (tests)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "experiments" / name,
        help="folder for runs/, figures/ and summary.csv (default: the experiment's folder)",
    )  # fmt: skip
    ap.add_argument(
        "--compile-cache", default=None,
        help="JAX compilation cache dir passed to bnlab (default: bnlab's own)",
    )  # fmt: skip
    ap.add_argument("--no-train", action="store_true", help="only redraw from existing runs")
    args = ap.parse_args()
    args.out = args.out.resolve()
    (args.out / "figures").mkdir(parents=True, exist_ok=True)
    return args


def train(args: argparse.Namespace, group: str, overrides: list[str]) -> Path:
    """``python -m bnlab.train -m OVERRIDES`` into ``<out>/runs/<group>``; returns that dir."""
    sweep_dir = args.out / "runs" / group
    if args.no_train:
        return sweep_dir
    cmd = [
        sys.executable, "-m", "bnlab.train", "-m", *overrides,
        f"hydra.sweep.dir={sweep_dir}", "progress=false", "figure=false",
    ]  # fmt: skip
    if args.compile_cache:
        cmd.append(f"compile_cache={args.compile_cache}")
    t0 = time.perf_counter()
    print(f"[{group}] python -m bnlab.train -m {' '.join(overrides)}", flush=True)
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    if args.smoke:  # the smoke run tests code paths, not speed: compile with less optimization
        env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *SMOKE_XLA_FLAGS]).strip()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("bnlab:")]
    print("\n".join(f"  {ln}" for ln in lines), flush=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"[{group}] bnlab.train failed (exit {res.returncode})")
    wall = time.perf_counter() - t0
    print(f"[{group}] done in {wall:.0f} s", flush=True)
    with open(args.out / "timing.log", "a") as f:
        f.write(f"{group}\t{wall:.0f} s\t{' '.join(overrides)}\n")
    return sweep_dir


def load(path: Path) -> Sweep:
    return load_sweep(path, warn=False)


def save(fig, args: argparse.Namespace, name: str) -> Path:
    path = args.out / "figures" / name
    fig.savefig(path, dpi=plot.DPI)
    print(f"figure: {path.relative_to(args.out)}")
    return path


def write_summary(df: pd.DataFrame, args: argparse.Namespace, name: str = "summary.csv") -> Path:
    path = args.out / name
    df.to_csv(path, index=False, float_format="%.6g")
    print(f"summary: {path.relative_to(args.out)}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.to_string(index=False))
    return path


def final(sweep: Sweep, label: str, name: str) -> float:
    """The last value of scalar ``name`` of the run ``label``."""
    sc = sweep.scalars
    rows = sc[(sc["label"] == label) & (sc["name"] == name)].sort_values("step")
    return float(rows["value"].iloc[-1]) if len(rows) else np.nan


def ics_summary(sweep: Sweep, *, tail: float = 0.5) -> pd.DataFrame:
    """Per run and layer: medians of the ICS / landscape statistics over the last
    ``tail`` fraction of the probes (the medians damp single-batch spikes)."""
    ics = sweep.ics
    if not len(ics):
        return pd.DataFrame()
    ics = ics[np.isfinite(ics["value"].astype(float))]
    cut = ics["step"].max() * (1 - tail)
    late = ics[ics["step"] >= cut]
    return late.groupby(["label", "layer", "stat"], sort=False)["value"].median().unstack("stat")


# --------------------------------------------------------------------------- seeds x lrs


def fmt_lr(v: float) -> str:
    return f"{v:g}"


def grid(args: argparse.Namespace, lrs: list[float], smoke_lrs: list[float]) -> list[str]:
    """Overrides for one vectorized job of every lr x seed, with a validation split."""
    lrs = smoke_lrs if args.smoke else lrs
    return [
        f"sweep.lr=[{','.join(fmt_lr(v) for v in lrs)}]",
        f"sweep.seeds={SMOKE_SEEDS if args.smoke else SEEDS}",
        f"data.validation={SMOKE_VALIDATION if args.smoke else VALIDATION}",
    ]


def tidy(sweep: Sweep) -> pd.DataFrame:
    """One row per run: ``norm``, ``lr``, ``seed``, status and the final scalars; a
    diverged run's accuracies are NaN (left out of means; counted in ``diverged``)."""
    r = sweep.runs.copy()
    r["lr"] = pd.to_numeric(r["optimizer.lr"])
    div = r["status"].eq("diverged")
    for c in [c for c in r.columns if c.startswith("final_") and "accuracy" in c]:
        r[c] = r[c].where(~div)
    r["diverged"] = div
    return r


def agg(df: pd.DataFrame, value: str, by: list[str] | str) -> pd.DataFrame:
    """Mean and interval of ``value`` per ``by`` (one row per seed), with ``text``."""
    out = aggregate(df, value, by)
    out["text"] = [format_interval(r) for _, r in out.iterrows()]
    return out


def interval(values) -> str:
    """Mean ± 95% t interval (n >= 5) or min-max (n < 5) of some values, as text."""
    v = pd.DataFrame({"v": np.asarray(list(values), dtype=float)})
    return format_interval(aggregate(v, "v").iloc[0])


def best_lr(runs: pd.DataFrame, by: str = "norm", value: str = "final_val_accuracy") -> dict:
    """Per ``by``: the lr with the highest mean ``value`` over seeds (validation
    accuracy; a diverged run counts as 0, as in the Optuna search)."""
    v = runs.assign(_v=runs[value].fillna(0.0))
    m = v.groupby([by, "lr"], sort=False)["_v"].mean().reset_index()
    return {k: float(g.loc[g["_v"].idxmax(), "lr"]) for k, g in m.groupby(by, sort=False)}


def lr_table(
    runs: pd.DataFrame, value: str, rows: list[str], *, by: str = "norm", best: dict | None = None
) -> str:
    """A markdown table of ``value`` (mean ± interval over seeds) per ``by`` x lr; the
    lr chosen on validation (``best``) is starred; diverged runs are counted."""
    lrs = sorted(runs["lr"].unique())
    a = agg(runs, value, [by, "lr"]).set_index([by, "lr"])
    nd = runs.groupby([by, "lr"])["diverged"].sum()
    head = f"| {by} \\ lr | " + " | ".join(fmt_lr(v) for v in lrs) + " |"
    lines = [head, "|---" * (len(lrs) + 1) + "|"]
    for k in rows:
        cells = []
        for lr in lrs:
            if (k, lr) not in a.index:
                cells.append("")
                continue
            t = a.loc[(k, lr), "text"]
            d = int(nd.get((k, lr), 0))
            if d:
                t += f"; {d} diverged"
            if best and best.get(k) == lr:
                t = f"**{t}** *"
            cells.append(t)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Results:
    """Markdown sections of numbers for ``<out>/results.md`` (quoted by the README)."""

    def __init__(self, args: argparse.Namespace, title: str):
        self.args = args
        self.parts = [f"# {title}\n", "Means over seeds, 95% Student-t interval of the mean "
                      "(n >= 5) or min-max range (n < 5); n counts runs with a finite value.\n"]  # fmt: skip

    def add(self, heading: str, body: str) -> None:
        self.parts.append(f"## {heading}\n\n{body}\n")

    def write(self) -> Path:
        path = self.args.out / "results.md"
        path.write_text("\n".join(self.parts))
        print(f"results: {path.relative_to(self.args.out)}")
        return path


def lr_panels(runs: pd.DataFrame, metrics: dict[str, str], title: str, *, by: str = "norm",
              logy: bool = True, ncols: int = 4):  # fmt: skip
    """One panel per metric (column of ``runs``: one value per run): its mean over seeds
    versus lr, a line per ``by``, with the 95% interval (t; min-max for n < 5) as bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(metrics)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows + 0.9), layout="constrained", dpi=plot.DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        fig.delaxes(ax)
    keys = list(dict.fromkeys(runs[by]))
    for ax, (col, name) in zip(axes.flat, metrics.items(), strict=False):
        a = aggregate(runs, col, [by, "lr"])
        for i, k in enumerate(keys):
            g = a[(a[by] == k) & (a["n"] > 0)].sort_values("lr")
            if not len(g):
                continue
            err = np.vstack([g["mean"] - g["lo"], g["hi"] - g["mean"]]).clip(min=0)
            ax.errorbar(g["lr"], g["mean"], yerr=err, marker="o", ms=3, capsize=2, color=f"C{i}",
                        label=f"{k} (n={int(g['n'].max())})")  # fmt: skip
        ax.set_xscale("log")
        if logy and (a["mean"].dropna() > 0).all():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig
