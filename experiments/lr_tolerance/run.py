"""Learning-rate tolerance of none / bn / bn_noaffine (Ioffe & Szegedy 2015; Bjorck et al. 2018).

    uv run python experiments/lr_tolerance/run.py          # 3 x 9 learning rates
    uv run python experiments/lr_tolerance/run.py --smoke  # a minute, data=digits

One vectorized sweep per norm variant (``sweep.lr=[...]``: every learning rate in one
compiled program, bnlab.sweep) of a 6-hidden-layer ReLU MLP (100 units each, LeCun
normal init) on Fashion-MNIST, plain SGD, batch 60. A member whose loss goes
non-finite or above ``diverge_loss`` (100) is recorded as diverged at that step.
Writes figures/lr_sweep.png (final test accuracy vs lr, diverged runs marked),
figures/depth_std.png (std of every layer's output vs depth at the last probe, per
lr) and summary.csv. See README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bnlab import plot  # noqa: E402
from bnlab.runs import layer_order  # noqa: E402

NAME = "lr_tolerance"
NORMS = ["none", "bn", "bn_noaffine"]
LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30]
DEPTH = 6
EARLY_LRS = [0.3, 1, 3, 10]
EARLY_STEPS = 40
SHOW_STEPS = [0, 1, 2, 3, 5, 10, 20, 40]


def overrides(smoke: bool) -> list[str]:
    lrs = [0.01, 1, 100] if smoke else LRS
    model = [
        "model.activation=relu", "model.init_std=null",
        f"model.features=[{','.join(['100'] * DEPTH)}]",
    ]  # fmt: skip
    if smoke:
        run = ["data=digits", "steps=100", "chunk_steps=50", "eval_every=50", "probe.every=50"]
    else:
        run = ["steps=3000", "chunk_steps=500", "eval_every=500", "probe.every=100"]
    return [
        f"norm={','.join(NORMS)}",
        f"sweep.lr=[{','.join(f'{v:g}' for v in lrs)}]",
        *model,
        *run,
    ]


def early_overrides(smoke: bool) -> list[str]:
    """The first steps of the unnormalized and BN nets at large lr, probed every step."""
    lrs = [1, 100] if smoke else EARLY_LRS
    model = overrides(smoke)[2:5]
    data_ = ["data=digits"] if smoke else []
    return [
        "norm=none,bn", f"sweep.lr=[{','.join(f'{v:g}' for v in lrs)}]", *model, *data_,
        f"steps={EARLY_STEPS}", f"chunk_steps={EARLY_STEPS}", f"eval_every={EARLY_STEPS}",
        "probe.every=1",
    ]  # fmt: skip


def early_figure(acts: pd.DataFrame, title: str) -> Figure:
    """std of every layer's output vs depth at the first steps: a panel per norm x lr."""
    a = acts[(acts["site"] == "post") & (acts["unit"] == -1) & (acts["stat"] == "std")]
    norms = [n for n in NORMS if n in set(a["norm"])]
    lrs = sorted(a["optimizer.lr"].unique())
    fig = Figure(
        figsize=(3.3 * len(lrs), 2.9 * len(norms) + 0.6), layout="constrained", dpi=plot.DPI
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(norms), len(lrs), sharex=True, sharey=True, squeeze=False)
    cmap = colormaps["plasma"]
    for i, norm in enumerate(norms):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            sub = a[(a["norm"] == norm) & (a["optimizer.lr"] == lr)]
            w = sub.pivot_table(index="step", columns="layer", values="value").sort_index()
            layers = layer_order(w.columns)
            steps = [t for t in SHOW_STEPS if t in w.index]
            if len(w) and w.index[-1] not in steps:
                steps.append(int(w.index[-1]))  # the last probe (before divergence)
            for t in steps:
                c = cmap(min(t, EARLY_STEPS) / EARLY_STEPS * 0.9)
                ax.plot(range(1, len(layers) + 1), w.loc[t, layers].to_numpy(), marker="o", ms=3,
                        color=c, label=f"step {t}")  # fmt: skip
            status = sub.groupby("run")["step"].max()
            last = int(status.max()) if len(status) else 0
            note = f"diverged after step {last}" if last < EARLY_STEPS else "finite all 40 steps"
            ax.set_title(f"{norm}, lr {lr:g} ({note})", fontsize=9)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5)
            if i == len(norms) - 1:
                ax.set_xlabel("hidden layer (depth)")
            if j == 0:
                ax.set_ylabel("std of the layer's output")
    fig.suptitle(title, fontsize=10)
    return fig


def depth_profile(acts: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Per run: the pooled std of every layer's ``site`` at the run's last probe."""
    a = acts[(acts["site"] == site) & (acts["unit"] == -1) & (acts["stat"] == "std")]
    last = a.groupby("run")["step"].transform("max")
    a = a[a["step"] == last]
    return a.pivot_table(
        index=["run", "norm", "optimizer.lr", "step"], columns="layer", values="value"
    )


def depth_figure(prof: pd.DataFrame, title: str) -> Figure:
    layers = layer_order(prof.columns)
    fig = Figure(figsize=(4.2 * len(NORMS), 3.6), layout="constrained", dpi=plot.DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(NORMS), sharey=True)
    lrs = sorted(prof.index.get_level_values("optimizer.lr").unique())
    cmap = colormaps["viridis"]
    for ax, norm in zip(axes, NORMS, strict=True):
        sub = prof[prof.index.get_level_values("norm") == norm]
        for (_run, _, lr, step), row in sub.iterrows():
            c = cmap(lrs.index(lr) / max(len(lrs) - 1, 1))
            ax.plot(range(1, len(layers) + 1), row[layers].to_numpy(), marker="o", ms=3,
                    color=c, label=f"lr {lr:g} (step {step})")  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(norm, fontsize=10)
        ax.set_xlabel("hidden layer (depth)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncols=2)
    axes[0].set_ylabel("std of the layer's output (probe batch)")
    fig.suptitle(title, fontsize=10)
    return fig


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    runs = common.train(args, "sweep", overrides(args.smoke))
    sweep = common.load(runs)
    data_name = sweep.runs["data"].iloc[0]
    where = f"{DEPTH}x100 ReLU MLP on {data_name}, SGD, batch 60, {int(sweep.runs['steps'].max())} steps"
    fig = plot.sweep_summary(
        sweep.runs, sweep.scalars, x="optimizer.lr", hue="norm", target=0.8,
        title=f"final test accuracy vs learning rate; X = diverged ({where})",
    )  # fmt: skip
    common.save(fig, args, "lr_sweep.png")
    prof = depth_profile(sweep.activations)
    fig = depth_figure(
        prof, f"std of each hidden layer's output at the last probe (diverged runs: the last "
        f"probe before divergence) vs depth ({where})",
    )  # fmt: skip
    common.save(fig, args, "depth_std.png")
    early = common.load(common.train(args, "early", early_overrides(args.smoke)))
    fig = early_figure(
        early.activations,
        f"the first {EARLY_STEPS} steps at large lr, probed every step: std of each hidden "
        f"layer's output vs depth (same net and data)",
    )  # fmt: skip
    common.save(fig, args, "depth_std_early.png")
    a = early.activations
    a = a[(a["site"] == "post") & (a["unit"] == -1) & (a["stat"] == "std")]
    rows = []
    for (norm, lr), g in a.groupby(["norm", "optimizer.lr"], sort=False):
        w = g.pivot_table(index="step", columns="layer", values="value").sort_index()
        last = int(w.index[-1])
        row = dict(norm=norm, lr=lr, last_finite_probe_step=last)
        row.update({f"{lay}_post_std_last": w.loc[last, lay] for lay in layer_order(w.columns)})
        rows.append(row)
    common.write_summary(pd.DataFrame(rows), args, "summary_early.csv")

    layers = layer_order(prof.columns)
    r = sweep.runs.set_index("run")
    rows = []
    for (run, norm, lr, step), stds in prof.iterrows():
        m = r.loc[run]
        rows.append(
            dict(
                norm=norm, lr=lr, status=m["status"],
                diverged_at=m["diverged_at"] if pd.notna(m["diverged_at"]) else np.nan,
                final_test_accuracy=(
                    m.get("final_test_accuracy", np.nan) if m["status"] == "finished" else np.nan
                ),
                probe_step=step,
                **{f"{lay}_post_std": stds[lay] for lay in layers},
                deepest_over_first_std=stds[layers[-1]] / stds[layers[0]],
            )
        )  # fmt: skip
    df = pd.DataFrame(rows).sort_values(
        ["norm", "lr"], key=lambda c: c.map(NORMS.index) if c.name == "norm" else c
    )
    common.write_summary(df, args)


if __name__ == "__main__":
    main()
