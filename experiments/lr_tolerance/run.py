"""Learning-rate tolerance of none / bn / bn_noaffine (Ioffe & Szegedy 2015; Bjorck et al. 2018).

    uv run python experiments/lr_tolerance/run.py          # 3 jobs of 6 lrs x 5 seeds
    uv run python experiments/lr_tolerance/run.py --smoke  # a minute or two, data=digits

One vectorized run per norm variant of 6 learning rates x 5 seeds (``sweep.lr=[...]
sweep.seeds=5``: every member in one compiled program) of a 6-hidden-layer ReLU MLP
(100 units each, LeCun normal init) on Fashion-MNIST, plain SGD, batch 60, 800 steps,
5,000 training examples held out for validation. A member whose loss goes non-finite
or above ``diverge_loss`` (100) is recorded as diverged at that step. A second group
repeats the first 40 steps of none and bn at lr 1, 3 and 10, probed every step.
Writes figures/lr_sweep.png, figures/depth_std.png, figures/depth_std_early.png,
summary.csv, summary_early.csv and results.md (means over seeds with 95% intervals).
See README.md.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bnlab.analysis import plot  # noqa: E402
from bnlab.analysis.runs import layer_order  # noqa: E402
from bnlab.analysis.stats import aggregate  # noqa: E402

NAME = "lr_tolerance"
NORMS = ["none", "bn", "bn_noaffine"]
LRS = [0.01, 0.1, 0.3, 1, 3, 10]
SMOKE_NORMS = ["bn"]  # smoke: one compile
SMOKE_LRS = [0.1, 100]
DEPTH = 6
EARLY_LRS = [1, 3, 10]
EARLY_STEPS = 40
SHOW_STEPS = [0, 1, 2, 3, 5, 10, 20, 40]


MODEL = [
    "model.activation=relu", "model.init_std=null", f"model.features=[{','.join(['100'] * DEPTH)}]",
]  # fmt: skip


def overrides(args) -> list[str]:
    if args.smoke:
        run = ["data=digits", "steps=20", "chunk_steps=20", "eval_every=20", "probe.every=10"]
    else:
        run = ["steps=800", "chunk_steps=200", "eval_every=200", "probe.every=200"]
    norms = SMOKE_NORMS if args.smoke else NORMS
    return [f"norm={','.join(norms)}", *MODEL, *run, *common.grid(args, LRS, SMOKE_LRS)]


def early_overrides(args) -> list[str]:
    """The first steps of the unnormalized and BN nets at large lr, probed every step.
    (--smoke: the main group's settings again, so its programs come from the compile
    cache: the same code path at the cost of one compile.)"""
    if args.smoke:
        return overrides(args)
    return [
        "norm=none,bn", *MODEL, "data.probe_size=500", f"steps={EARLY_STEPS}",
        f"chunk_steps={EARLY_STEPS}", f"eval_every={EARLY_STEPS}", "probe.every=1",
        *common.grid(args, EARLY_LRS, EARLY_LRS),
    ]  # fmt: skip


def geo(values: np.ndarray) -> tuple[float, float, float, int]:
    """Geometric mean of positive values with the 95% t interval (n >= 5; min-max below)
    computed on their logs; (mean, lo, hi, n)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return np.nan, np.nan, np.nan, 0
    a = aggregate(pd.DataFrame({"v": np.log10(v)}), "v").iloc[0]
    return 10 ** a["mean"], 10 ** a["lo"], 10 ** a["hi"], int(a["n"])


def geo_text(values) -> str:
    v = np.asarray(list(values), dtype=float)
    zeros = int((v == 0).sum())
    m, lo, hi, n = geo(v)
    note = f"; {zeros} exactly 0, left out" if zeros else ""
    if n == 0:
        return f"n/a{note}"
    how = "95% t on logs" if n >= 5 else "min-max"
    return f"{m:.3g} [{lo:.3g}, {hi:.3g}] (n={n}, {how}{note})"


# what every depth figure's band is, written once under the panels (BAND_NOTE) and, per
# line, the n it was computed from (band_note)
BAND_NOTE = ("Line: geometric mean over the seeds of each layer's std; band: 95% t interval "
             "on the logs where n >= 5, the min-max range where n < 5 (*); a std of exactly 0 "
             "(a silent layer) has no logarithm and is left out; n is written beside every "
             "point computed from fewer values than the line's runs.")  # fmt: skip


def band_note(stats: list[tuple[float, float, float, int]], rows: int) -> str:
    """The n a depth line's band was computed from: ``n=5``, or ``n=lo-hi of rows*`` where
    some points have fewer values (stds of 0 left out; min-max below 5)."""
    ns = [s[3] for s in stats]
    if min(ns) == max(ns) == rows and rows >= 5:
        return f"n={rows}"
    if min(ns) == max(ns):
        return f"n={rows}*"
    return f"n={min(ns)}-{max(ns)} of {rows}*"


def mark_n(ax, x, stats, rows: int, color) -> None:
    """Write n beside every point computed from fewer than ``rows`` values."""
    for xi, s in zip(x, stats, strict=True):
        if s[3] < rows and np.isfinite(s[0]):
            ax.annotate(f"n={s[3]}", (xi, s[0]), fontsize=5.5, color=color,
                        xytext=(2, 2), textcoords="offset points")  # fmt: skip


def post_std(acts: pd.DataFrame) -> pd.DataFrame:
    a = acts[(acts["site"] == "post") & (acts["unit"] == -1) & (acts["stat"] == "std")]
    return a.pivot_table(
        index=["run", "norm", "optimizer.lr", "seed", "step"], columns="layer", values="value"
    ).reset_index()


def early_figure(w: pd.DataFrame, total: int, title: str) -> Figure:
    """std of every layer's output vs depth at the first steps: a panel per norm x lr;
    per step the geometric mean over the seeds still finite (the band and its n in the
    legend, n beside every point that has fewer)."""
    norms = [n for n in NORMS if n in set(w["norm"])]
    lrs = sorted(w["optimizer.lr"].unique())
    layers = layer_order(c for c in w.columns if str(c).startswith("layer"))
    fig = Figure(
        figsize=(3.6 * len(lrs), 3.0 * len(norms) + 0.6), layout="constrained", dpi=plot.DPI
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(norms), len(lrs), sharex=True, sharey=True, squeeze=False)
    cmap = colormaps["plasma"]
    x = np.arange(1, len(layers) + 1)
    for i, norm in enumerate(norms):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            sub = w[(w["norm"] == norm) & (w["optimizer.lr"] == lr)]
            last = sub.groupby("seed")["step"].max()
            steps = [t for t in SHOW_STEPS if t in set(sub["step"])]
            for t in steps:
                at = sub[sub["step"] == t][layers].to_numpy()
                stats = [geo(at[:, k]) for k in range(len(layers))]
                c = cmap(min(t, total) / max(total, 1) * 0.9)
                ax.plot(x, [s[0] for s in stats], marker="o", ms=3, color=c,
                        label=f"step {t} ({band_note(stats, len(at))})")  # fmt: skip
                mark_n(ax, x, stats, len(at), c)
                ax.fill_between(x, [s[1] for s in stats], [s[2] for s in stats], color=c,
                                alpha=0.15, lw=0)  # fmt: skip
            gone = int((last < total).sum())
            note = (
                f"{gone}/{len(last)} seeds diverged, after step {int(last.min())}-"
                f"{int(last[last < total].max())}"
                if gone
                else f"all {len(last)} seeds finite"
            )
            ax.set_title(f"{norm}, lr {lr:g}\n({note})", fontsize=9)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            below = -0.32 if i == len(norms) - 1 else -0.2  # under the x label on the last row
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, below), ncols=2)
            if i == len(norms) - 1:
                ax.set_xlabel("hidden layer (depth)")
            if j == 0:
                ax.set_ylabel("std of the layer's output")
    fig.suptitle(textwrap.fill(title, 40 * len(lrs)), fontsize=9)
    fig.supxlabel(textwrap.fill(BAND_NOTE, 45 * len(lrs)), fontsize=7)
    return fig


def depth_figure(prof: pd.DataFrame, title: str) -> Figure:
    """std vs depth at the last probe of the runs that finished: a panel per norm, a
    line per lr (geometric mean over seeds; the band and its n in the legend)."""
    layers = layer_order(c for c in prof.columns if str(c).startswith("layer"))
    norms = [n for n in NORMS if n in set(prof["norm"])]
    fig = Figure(figsize=(4.2 * len(norms), 3.8), layout="constrained", dpi=plot.DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(norms), sharey=True, squeeze=False)[0]
    lrs = sorted(prof["optimizer.lr"].unique())
    cmap = colormaps["viridis"]
    x = np.arange(1, len(layers) + 1)
    for ax, norm in zip(axes, norms, strict=True):
        for lr in lrs:
            sub = prof[(prof["norm"] == norm) & (prof["optimizer.lr"] == lr) & prof["finished"]]
            if not len(sub):
                continue
            stats = [geo(sub[lay].to_numpy()) for lay in layers]
            c = cmap(lrs.index(lr) / max(len(lrs) - 1, 1))
            ax.plot(x, [s[0] for s in stats], marker="o", ms=3, color=c,
                    label=f"lr {lr:g} ({band_note(stats, len(sub))})")  # fmt: skip
            mark_n(ax, x, stats, len(sub), c)
            ax.fill_between(x, [s[1] for s in stats], [s[2] for s in stats], color=c, alpha=0.15,
                            lw=0)  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(norm, fontsize=10)
        ax.set_xlabel("hidden layer (depth)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.24))
    axes[0].set_ylabel("std of the layer's output (probe batch)")
    fig.suptitle(textwrap.fill(title, 150), fontsize=9)
    fig.supxlabel(textwrap.fill(BAND_NOTE, 170), fontsize=7)
    return fig


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    sweep = common.load(common.train(args, "sweep", overrides(args)))
    r = common.tidy(sweep)
    n = r["seed"].nunique()
    norms = [k for k in NORMS if k in set(r["norm"])]
    best = common.best_lr(r)
    data_name = sweep.runs["data"].iloc[0]
    total = int(sweep.runs["steps"].max())
    where = f"{DEPTH}x100 ReLU MLP on {data_name}, SGD, batch 60, {total} steps, {n} seeds"
    fig = plot.sweep_summary(
        sweep.runs, sweep.scalars, x="optimizer.lr", hue="norm", target=0.8,
        title=f"final test accuracy vs learning rate (mean and 95% interval over seeds; * = "
        f"best lr on validation; X = diverged) ({where})",
    )  # fmt: skip
    common.save(fig, args, "lr_sweep.png")
    ps = post_std(sweep.activations)
    prof = ps[ps["step"] == ps.groupby("run")["step"].transform("max")].copy()
    prof["finished"] = prof["run"].map(r.set_index("run")["status"].eq("finished"))
    fig = depth_figure(
        prof, f"std of each hidden layer's output at the end, runs that did not diverge; "
        f"geometric mean over seeds; band: 95% t on logs (min-max where n<5) ({where})",
    )  # fmt: skip
    common.save(fig, args, "depth_std.png")
    layers = layer_order(c for c in prof.columns if str(c).startswith("layer"))

    early = common.load(common.train(args, "early", early_overrides(args)))
    ew = post_std(early.activations)
    n_early = int(early.runs["steps"].max())
    fig = early_figure(
        ew, n_early, f"the first {n_early} steps at large lr, probed every step: std of each "
        f"hidden layer's output vs depth,\ngeometric mean over the seeds still finite at that "
        f"step; band: 95% t on logs, min-max where n<5, n in the legend (same net and data)",
    )  # fmt: skip
    common.save(fig, args, "depth_std_early.png")
    last = ew[ew["step"] == ew.groupby("run")["step"].transform("max")].copy()
    last["deepest_over_first"] = last[layers[-1]] / last[layers[0]]
    out = last.rename(columns={"optimizer.lr": "lr", "step": "last_finite_probe_step"})
    out = out.rename(columns={lay: f"{lay}_post_std_last" for lay in layers}).drop(columns="run")
    common.write_summary(out.sort_values(["norm", "lr", "seed"]), args, "summary_early.csv")

    res = common.Results(args, f"Learning-rate tolerance ({where})")
    res.add(
        "Final test accuracy (* = the lr chosen on validation; diverged runs counted, not "
        "averaged)",
        common.lr_table(r, "final_test_accuracy", norms, best=best),
    )
    trains = r.assign(ok=r["final_test_accuracy"].fillna(0) > 0.5).groupby(["norm", "lr"])["ok"]
    trains = trains.all().reset_index()
    largest = {k: g.loc[g["ok"], "lr"].max() for k, g in trains.groupby("norm")}
    res.add(
        "Largest lr at which every seed ends above 0.5 test accuracy",
        ", ".join(f"{k}: {common.fmt_lr(largest[k])}" for k in norms if k in largest),
    )
    prof["deepest_over_first"] = prof[layers[-1]] / prof[layers[0]]
    lrs = sorted(prof["optimizer.lr"].unique())
    lines = ["| norm \\ lr | " + " | ".join(common.fmt_lr(v) for v in lrs) + " |",
             "|---" * (len(lrs) + 1) + "|"]  # fmt: skip
    for k in norms:
        cells = [
            geo_text(prof[(prof["norm"] == k) & (prof["optimizer.lr"] == lr) & prof["finished"]]
                     ["deepest_over_first"])
            for lr in lrs
        ]  # fmt: skip
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    res.add(
        f"std of layer {DEPTH}'s output / std of layer 1's, at step {total} (runs that did not "
        "diverge; geometric mean)",
        "\n".join(lines),
    )
    init = ps[ps["step"] == 0]
    res.add(
        "std of each hidden layer's output at initialization (step 0; geometric mean over seeds)",
        "| norm | " + " | ".join(layers) + " |\n" + "|---" * (len(layers) + 1) + "|\n"
        + "\n".join(
            f"| {k} | " + " | ".join(geo_text(init[init["norm"] == k].groupby("seed")[lay].first())
                                     for lay in layers) + " |"
            for k in norms
        ),
    )  # fmt: skip
    rows = []
    for (k, lr), g in last.groupby(["norm", "optimizer.lr"], sort=False):
        rows.append(
            f"| {k} | {lr:g} | {common.interval(g['step'])} | "
            + " | ".join(geo_text(g[lay]) for lay in layers) + " |"
        )  # fmt: skip
    res.add(
        f"First {n_early} steps, probed every step: std of each hidden layer's output at each "
        "seed's last finite probe (geometric mean over seeds)",
        "| norm | lr | last finite probe step | " + " | ".join(layers) + " |\n"
        + "|---" * (len(layers) + 3) + "|\n" + "\n".join(rows),
    )  # fmt: skip
    res.add("Best lr on validation", ", ".join(f"{k}: {common.fmt_lr(v)}" for k, v in best.items()))
    res.write()

    cols = ["norm", "lr", "seed", "status", "diverged_at", "final_test_accuracy",
            "final_val_accuracy", "final_train_loss"]  # fmt: skip
    df = r[cols].merge(
        prof.rename(columns={"optimizer.lr": "lr", "step": "probe_step"})
        .rename(columns={lay: f"{lay}_post_std" for lay in layers})
        .drop(columns=["run", "finished"]),
        on=["norm", "lr", "seed"], how="left",
    )  # fmt: skip
    df = df.sort_values(
        ["norm", "lr", "seed"], key=lambda c: c.map(NORMS.index) if c.name == "norm" else c
    )
    common.write_summary(df, args)


if __name__ == "__main__":
    main()
