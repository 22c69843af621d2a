"""Ioffe & Szegedy 2015, Sec. 2: normalize, but treat the batch statistics as constants.

    uv run python experiments/ioffe2015_sec2_statgrad/run.py          # 3 jobs of 4 lrs x 5 seeds
    uv run python experiments/ioffe2015_sec2_statgrad/run.py --smoke  # seconds, data=digits

The Fig. 1 MLP (sigmoid, batch 60, plain SGD, 2,000 steps; each variant one vectorized
run of 4 learning rates x 5 seeds, 5,000 training examples held out for validation) with BN without gamma/beta
(norm.use_scale=false norm.use_bias=false, so the linear layer's bias b is the only
shift before the normalization, as in the paper's argument), three ways:

- ``bn``: backpropagate through the batch mean and variance (the fix);
- ``bn_nostatgrad_meanonly``: x - E[x], E[x] a constant in the gradient;
- ``bn_nostatgrad``: (x - E[x]) / sd[x], both constants in the gradient.

Writes figures/bias_and_weights.png, figures/learning_curves.png, figures/lr_sweep.png,
summary.csv (one row per run) and results.md (means over seeds with 95% intervals).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnlab.analysis import plot  # noqa: E402

NAME = "ioffe2015_sec2_statgrad"
NORMS = ["bn", "bn_nostatgrad_meanonly", "bn_nostatgrad"]
SMOKE_NORMS = ["bn_nostatgrad"]  # one compile
LRS = [0.1, 0.5, 2.0, 5.0]
SMOKE_LRS = [0.5, 2.0]
PAPER_LR = 0.5


def with_bias_rms(layers: pd.DataFrame) -> pd.DataFrame:
    """Add ``bias_rms`` rows: sqrt(mean^2 + std^2) of the linear layer's bias b."""
    w = layers[layers["stat"].isin(["bias_mean", "bias_std"])]
    keys = [c for c in w.columns if c not in ("stat", "value")]
    wide = w.pivot_table(index=keys, columns="stat", values="value").reset_index()
    wide["value"] = np.sqrt(wide["bias_mean"] ** 2 + wide["bias_std"] ** 2)
    rms = wide.drop(columns=["bias_mean", "bias_std"]).assign(stat="bias_rms")
    return pd.concat([layers, rms[layers.columns]], ignore_index=True)


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    norms = SMOKE_NORMS if args.smoke else NORMS
    if args.smoke:
        run = ["data=digits", "steps=20", "chunk_steps=20", "eval_every=20", "probe.every=10"]
    else:
        run = ["steps=2000", "chunk_steps=500", "eval_every=500", "probe.every=250"]
    runs = common.train(
        args, "statgrad",
        [f"norm={','.join(norms)}", "norm.use_scale=false", "norm.use_bias=false", *run,
         *common.grid(args, LRS, SMOKE_LRS)],
    )  # fmt: skip
    sweep = common.load(runs)
    r = common.tidy(sweep)
    n = r["seed"].nunique()
    total = int(sweep.runs["step"].max())
    where = f"{sweep.runs['data'].iloc[0]}, Fig. 1 MLP, BN without gamma/beta, SGD, {total} steps"
    lr0 = PAPER_LR if PAPER_LR in set(r["lr"]) else float(r["lr"].max())
    layers = with_bias_rms(sweep.layers)
    at = layers[np.isclose(layers["optimizer.lr"], lr0)].assign(label=lambda d: d["norm"])
    fig = plot.layer_curves(
        at, ["bias_rms", "weight_norm"], logy=["weight_norm"],
        title=f"Sec. 2 at lr {lr0:g}: the bias b before the normalization (rms over units) and "
        f"the weight norm, with and without backprop through the statistics; mean and 95% band "
        f"over {n} seeds ({where})",
    )  # fmt: skip
    common.save(fig, args, "bias_and_weights.png")
    sc = sweep.scalars
    fig = plot.learning_curves(
        sc[np.isclose(sc["optimizer.lr"], lr0)].assign(label=lambda d: d["norm"]),
        title=f"learning curves at lr {lr0:g}, mean and 95% band over {n} seeds ({where})",
    )  # fmt: skip
    common.save(fig, args, "learning_curves.png")
    fig = plot.sweep_summary(
        sweep.runs, sc, x="optimizer.lr", hue="norm",
        title=f"final test accuracy vs lr (mean and 95% interval over {n} seeds; * = best lr on "
        f"validation; X = diverged) ({where})",
    )  # fmt: skip
    common.save(fig, args, "lr_sweep.png")

    per = []
    for run, lay in layers.groupby("run", sort=False):
        piv = lay.pivot_table(index="step", columns=["stat", "layer"], values="value").sort_index()
        b, wn = piv["bias_rms"], piv["weight_norm"]
        after = piv.index[piv.index >= max(total // 10, 1)]
        if not len(after):  # diverged before a tenth of the steps: no growth to measure
            per.append(dict(run=run))
            continue
        tenth = after[0]
        per.append(
            dict(
                run=run,
                bias_rms_max_layer_final=b.iloc[-1].max(),
                bias_rms_growth_last_90pct=(b.iloc[-1] / b.loc[tenth]).max(),
                weight_norm_max_layer_final=wn.iloc[-1].max(),
                weight_norm_growth_last_90pct=(wn.iloc[-1] / wn.loc[tenth]).max(),
            )
        )
    r = r.merge(pd.DataFrame(per), on="run", how="left")
    grown = [c for c in pd.DataFrame(per).columns if c != "run"]
    for c in grown:  # a diverged run has no end value
        r[c] = r[c].where(~r["diverged"])
    tr = sc[sc["name"] == "train_loss"].sort_values("step")
    r["train_loss_last_10pct"] = r["run"].map(
        tr[tr["step"] > total * 0.9].groupby("run")["value"].mean()
    )
    best = common.best_lr(r)
    res = common.Results(args, f"Ioffe & Szegedy 2015 Sec. 2 ({where}, {n} seeds)")
    for col, what in (
        ("final_test_accuracy", "Final test accuracy (* = the lr chosen on validation)"),
        ("train_loss_last_10pct", "Train loss, mean over the last 10% of the steps"),
        ("bias_rms_max_layer_final", f"rms of the bias b at step {total}, largest layer"),
        ("bias_rms_growth_last_90pct", f"growth of b's rms from step {total // 10} to {total}, "
                                       "largest over layers"),
        ("weight_norm_max_layer_final", f"weight norm at step {total}, largest layer"),
        ("weight_norm_growth_last_90pct", f"growth of the weight norm from step {total // 10} to "
                                          f"{total}, largest over layers"),
    ):  # fmt: skip
        res.add(what, common.lr_table(r, col, norms, best=best))
    res.add("Best lr on validation", ", ".join(f"{k}: {common.fmt_lr(v)}" for k, v in best.items()))
    res.write()
    cols = [
        "norm", "lr", "seed", "status", "step", "diverged_at", "final_test_accuracy",
        "final_val_accuracy", "final_train_loss", "train_loss_last_10pct",
        "bias_rms_max_layer_final", "bias_rms_growth_last_90pct", "weight_norm_max_layer_final",
        "weight_norm_growth_last_90pct", "wall_time_s",
    ]  # fmt: skip
    common.write_summary(r[cols].sort_values(["norm", "lr", "seed"]), args)


if __name__ == "__main__":
    main()
