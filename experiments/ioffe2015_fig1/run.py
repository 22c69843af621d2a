"""Ioffe & Szegedy 2015, Fig. 1: the 784-100-100-100-10 sigmoid MLP with and without BN.

    uv run python experiments/ioffe2015_fig1/run.py            # 3 jobs of 4 lrs x 5 seeds
    uv run python experiments/ioffe2015_fig1/run.py --smoke    # seconds, on data=digits

Trains norm=none, bn and bn_noaffine (BN without gamma/beta), each as ONE vectorized
run of 4 learning rates x 5 seeds (batch 60, plain SGD, 3,000 steps, 5,000 training
examples held out for validation), probes every 125 steps tracking 20 units of every
layer; and BN at the paper's lr 0.5 once more with eval-mode probes (BN's running
averages instead of the probe batch's statistics). MNIST when its files are available
offline, else Fashion-MNIST. Writes figures/*.png, summary.csv (one row per run) and
results.md (means over seeds with 95% intervals). See README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bnlab import data  # noqa: E402
from bnlab.analysis import plot

NAME = "ioffe2015_fig1"
NORMS = ["none", "bn", "bn_noaffine"]
LRS = [0.03, 0.1, 0.5, 2.0]
SMOKE_LRS = [0.1, 0.5]
PAPER_LR = 0.5
LAYER = "layer3"
UNITS = 20  # units tracked one by one in every layer (probe.units=[0..19])
TARGET = 0.8


def dataset(smoke: bool) -> str:
    """MNIST if its files are here (never downloaded: the run must work offline)."""
    if smoke:
        return "digits"
    try:
        data.load("mnist", download=False)
        return "mnist"
    except data.DataError:
        return "fashion_mnist"


def schedule(smoke: bool) -> tuple[list[str], int]:
    """Step overrides, and the 'early' step after which drift is measured."""
    if smoke:
        return ["steps=40", "chunk_steps=20", "eval_every=20", "probe.every=10"], 10
    return ["steps=3000", "chunk_steps=250", "eval_every=250", "probe.every=125"], 500


def views(acts: pd.DataFrame, eval_acts: pd.DataFrame | None, lr: float) -> pd.DataFrame:
    """``layer3`` activations at ``lr`` as panels: (norm, site, probe mode) -> ``view``."""
    a = acts[(acts["layer"] == LAYER) & np.isclose(acts["optimizer.lr"], lr)]
    parts = []
    for norm in [k for k in NORMS if k in set(a["norm"])]:
        for site in ("pre", "prenorm"):
            sub = a[(a["norm"] == norm) & (a["site"] == site)]
            if len(sub):
                what = "Wx+b" if (norm == "none" or site == "prenorm") else "BN output"
                parts.append(sub.assign(view=f"{norm}: {site} ({what})"))
        if norm == "bn" and eval_acts is not None:
            e = eval_acts[(eval_acts["layer"] == LAYER) & (eval_acts["site"] == "pre")]
            parts.append(e.assign(view="bn: pre, eval-mode probe"))
    return pd.concat(parts, ignore_index=True)


def unit_drift(v: pd.DataFrame, early: int) -> pd.DataFrame:
    """Per run, view and tracked unit: |median(final) - median(early)|, the range of
    the median after ``early``, and the p15-p85 width at ``early`` and at the end."""
    u = v[v["unit"] >= 0]
    w = u.pivot_table(
        index=["view", "norm", "optimizer.lr", "seed", "unit", "step"], columns="stat",
        values="value",
    ).reset_index()  # fmt: skip
    rows = []
    for key, g in w.groupby(["view", "norm", "optimizer.lr", "seed", "unit"], sort=False):
        g = g.sort_values("step")
        e = g[g["step"] <= early].iloc[-1]
        f = g.iloc[-1]
        late = g[g["step"] >= early]
        rows.append(
            dict(
                zip(["view", "norm", "lr", "seed", "unit"], key, strict=True),
                median_shift=abs(f["p50"] - e["p50"]),
                median_range=late["p50"].max() - late["p50"].min(),
                width_early=e["p85"] - e["p15"], width_final=f["p85"] - f["p15"],
            )
        )  # fmt: skip
    return pd.DataFrame(rows)


def units_figure(v: pd.DataFrame, title: str) -> Figure:
    """Every tracked unit's median over training (all seeds), one panel per view."""
    names = list(dict.fromkeys(v["view"]))
    ncols = 3
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.0 * nrows + 0.8), layout="constrained", dpi=plot.DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    for ax in axes.flat[len(names) :]:
        fig.delaxes(ax)
    u = v[(v["unit"] >= 0) & (v["stat"] == "p50")]
    for ax, name in zip(axes.flat, names, strict=False):
        sub = u[u["view"] == name]
        w = sub.pivot_table(index="step", columns=["seed", "unit"], values="value").sort_index()
        ax.plot(w.index, w.to_numpy(), color="C0", lw=0.5, alpha=0.25)
        ax.plot(w.index, w.median(axis=1), color="k", lw=1.5, label="median over units")
        n_seeds = sub["seed"].nunique()
        ax.set_title(f"{name}\n{sub['unit'].nunique()} units x {n_seeds} seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("unit's median on the probe batch")
    fig.suptitle(title, fontsize=10)
    return fig


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    ds = dataset(args.smoke)
    steps, early = schedule(args.smoke)
    units = 3 if args.smoke else UNITS
    base = [
        f"data={ds}", "experiment=ioffe2015_fig1", *steps,
        f"probe.units=[{','.join(str(i) for i in range(units))}]",
    ]  # fmt: skip
    norms = ["bn"] if args.smoke else NORMS  # smoke: one compile per group
    runs = common.train(
        args, "fig1", [f"norm={','.join(norms)}", *base, *common.grid(args, LRS, SMOKE_LRS)]
    )
    seeds = common.SMOKE_SEEDS if args.smoke else common.SEEDS
    val = common.SMOKE_VALIDATION if args.smoke else common.VALIDATION
    eval_runs = common.train(
        args, "fig1_eval",
        ["norm=bn", *base, f"optimizer.lr={PAPER_LR}", f"sweep.seeds={seeds}",
         f"data.validation={val}", "probe.bn_mode=eval"],
    )  # fmt: skip
    sweep = common.load(runs)
    ev = common.load(eval_runs)
    data_name = sweep.runs["data"].iloc[0]
    total = int(sweep.runs["step"].max())
    where = f"{data_name}, batch 60, SGD, {total} steps"
    r = common.tidy(sweep)
    best = common.best_lr(r)
    n = r["seed"].nunique()

    # (a) accuracy and speed, over the lr grid
    sc = sweep.scalars
    at_lr = sc[np.isclose(sc["optimizer.lr"], PAPER_LR)].assign(label=lambda d: d["norm"])
    fig = plot.learning_curves(
        at_lr, title=f"Fig. 1(a) at the paper's lr {PAPER_LR}: test accuracy and train loss, "
        f"mean and 95% band over {n} seeds ({where})",
    )  # fmt: skip
    later = at_lr[(at_lr["name"] == "test_accuracy") & (at_lr["step"] > 0)]["value"]
    if len(later):
        fig.axes[0].set_ylim(max(0.0, later.quantile(0.05) - 0.03), later.max() + 0.01)
    common.save(fig, args, "test_accuracy.png")
    fig = plot.sweep_summary(
        sweep.runs, sc, x="optimizer.lr", hue="norm", target=TARGET,
        title=f"final test accuracy vs lr (mean and 95% interval over {n} seeds; * = best lr "
        f"on validation) and the first step with test accuracy >= {TARGET} ({where})",
    )  # fmt: skip
    common.save(fig, args, "lr_sweep.png")
    acc = sc[sc["name"] == "test_accuracy"]
    hit = acc[acc["value"] >= TARGET].groupby("run")["step"].min()
    r["first_step_acc_ge_0_8"] = r["run"].map(hit).astype(float)
    last3 = acc.sort_values("step").groupby("run")["value"].apply(lambda s: s.iloc[-3:].mean())
    r["mean_test_accuracy_last_3_evals"] = r["run"].map(last3).where(~r["diverged"])

    # (b, c) drift: pooled, and every tracked unit; train- and eval-mode probes
    v = views(sweep.activations, ev.activations, PAPER_LR)
    pooled = v[v["unit"] == -1].assign(label=lambda d: d["view"], site="x")
    fig = plot.drift_bands(
        pooled, LAYER, "x", ncols=3, sharey=True,
        title=f"Fig. 1(b, c) at lr {PAPER_LR}: 15/50/85th percentiles of {LAYER}'s 100 inputs "
        f"pooled, on the probe batch; mean and 95% band over {n} seeds. Train-mode probes: a "
        f"BN unit's pre mean and std on the probe batch ARE its beta and gamma ({where})",
    )  # fmt: skip
    common.save(fig, args, f"drift_{LAYER}_pooled.png")
    fig = units_figure(
        v, f"Fig. 1(b, c), many units at lr {PAPER_LR}: the median of each of {units} tracked "
        f"{LAYER} units on the probe batch, every seed (thin), and their median (black) ({where})",
    )  # fmt: skip
    common.save(fig, args, f"drift_{LAYER}_units.png")

    all_views = pd.concat(
        [views(sweep.activations, ev.activations if lr == PAPER_LR else None, lr)
         for lr in sorted(r["lr"].unique())], ignore_index=True,
    )  # fmt: skip
    ud = unit_drift(all_views, early)
    ud["width_ratio"] = ud["width_final"] / ud["width_early"]
    per_run = (
        ud.groupby(["view", "norm", "lr", "seed"], sort=False)[
            ["median_shift", "median_range", "width_ratio"]
        ]
        .median()
        .reset_index()
    )
    per_run["diverged"] = False
    pw = all_views[(all_views["unit"] == -1) & all_views["stat"].isin(["p15", "p85"])]
    pw = pw.pivot_table(index=["view", "optimizer.lr", "seed", "step"], columns="stat",
                        values="value").reset_index()  # fmt: skip
    pw["width"] = pw["p85"] - pw["p15"]
    pool_rows = []
    for (view, lr, seed), g in pw.groupby(["view", "optimizer.lr", "seed"], sort=False):
        g = g.sort_values("step")
        e = g[g["step"] <= early].iloc[-1]["width"]
        pool_rows.append(dict(view=view, lr=lr, seed=seed, pooled_width_early=e,
                              pooled_width_final=g["width"].iloc[-1],
                              pooled_width_ratio=g["width"].iloc[-1] / e))  # fmt: skip
    pool = pd.DataFrame(pool_rows)

    res = common.Results(args, f"Ioffe & Szegedy 2015 Fig. 1 ({where}, {n} seeds)")
    res.add(
        "Final test accuracy (* = the lr chosen on validation)",
        common.lr_table(r, "final_test_accuracy", norms, best=best),
    )
    res.add(
        "Mean test accuracy of the last 3 evaluations",
        common.lr_table(r, "mean_test_accuracy_last_3_evals", norms, best=best),
    )
    res.add(
        f"First step with test accuracy >= {TARGET} (evaluated every {int(sweep.runs['eval_every'].iloc[0])} steps; "
        "n = seeds that got there)",
        common.lr_table(r, "first_step_acc_ge_0_8", norms),
    )
    views_order = list(dict.fromkeys(all_views["view"]))
    pr = per_run.rename(columns={"view": "what"})
    res.add(
        f"{LAYER}: median over the {units} tracked units of |median(step {total}) - "
        f"median(step {early})| (per seed, then mean ± interval over seeds)",
        common.lr_table(pr, "median_shift", views_order, by="what"),
    )
    res.add(
        f"{LAYER}: median over units of the range of a unit's median after step {early}",
        common.lr_table(pr, "median_range", views_order, by="what"),
    )
    res.add(
        f"{LAYER}: median over units of a unit's p15-p85 width at step {total} / at step {early}",
        common.lr_table(pr, "width_ratio", views_order, by="what"),
    )
    pl = pool.rename(columns={"view": "what"}).assign(diverged=False)
    for col, what in (
        ("pooled_width_early", f"at step {early}"),
        ("pooled_width_final", f"at step {total}"),
        ("pooled_width_ratio", f"at step {total} / at step {early}"),
    ):
        res.add(
            f"{LAYER}, all 100 units pooled: p15-p85 width {what}",
            common.lr_table(pl, col, views_order, by="what"),
        )
    spread = ud[np.isclose(ud["lr"], PAPER_LR)].groupby("view", sort=False)["median_shift"]
    lines = ["| what | p10 | median | p90 | units x seeds |", "|---|---|---|---|---|"]
    for view, s in spread:
        q = s.quantile([0.1, 0.5, 0.9]).to_numpy()
        lines.append(f"| {view} | {q[0]:.3g} | {q[1]:.3g} | {q[2]:.3g} | {len(s)} |")
    res.add(
        f"Spread over all tracked units and seeds of |median shift| at lr {PAPER_LR}",
        "\n".join(lines),
    )
    res.add("Best lr on validation", ", ".join(f"{k}: {common.fmt_lr(v)}" for k, v in best.items()))
    res.write()

    cols = [
        "norm", "lr", "seed", "data", "status", "step", "diverged_at", "final_test_accuracy",
        "final_val_accuracy", "final_train_loss", "mean_test_accuracy_last_3_evals",
        "first_step_acc_ge_0_8", "wall_time_s",
    ]  # fmt: skip
    out = r[[c for c in cols if c in r.columns]]
    drift = per_run[per_run["view"].str.endswith("(BN output)") | (per_run["norm"] == "none")]
    drift = drift[~drift["view"].str.contains("eval")]
    out = out.merge(drift.drop(columns="view"), on=["norm", "lr", "seed"], how="left")
    common.write_summary(out.sort_values(["norm", "lr", "seed"]), args)


if __name__ == "__main__":
    main()
