"""Santurkar et al. 2018: standard vs BN vs noisy BN; gradient-ICS; the loss landscape.

    uv run python experiments/santurkar2018/run.py          # MLP: 3 jobs of 4 lrs x 5 seeds
    uv run python experiments/santurkar2018/run.py --cnn    # + the CNN (over the budget)
    uv run python experiments/santurkar2018/run.py --smoke  # a minute, data=digits

Trains norm=none, bn and bn_noisy, each one vectorized run of 4 SGD learning rates x
5 seeds (the paper's VGG lr 0.1 among them), on Fashion-MNIST: the Fig. 1 MLP
(784-100-100-100-10, sigmoid), and with --cnn a small ReLU CNN (conv 16, conv 32,
dense 128). Every run measures the
gradient-ICS of every layer and the landscape along the gradient every
``probe.ics_every`` steps (bnlab.measure). Writes, per model, figures/accuracy_*.png,
figures/drift_*.png (percentiles of a hidden layer's nonlinearity input),
figures/moments_*.png, figures/ics_*.png, and figures/landscape.png (both models),
and summary.csv. See README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnlab.analysis import plot  # noqa: E402
from bnlab.analysis.runs import layer_order  # noqa: E402

NAME = "santurkar2018"
NORMS = ["none", "bn", "bn_noisy"]
LRS = [0.03, 0.1, 0.5, 2.0]
SMOKE_LRS = [0.1, 0.5]
PAPER_LR = 0.1  # the paper's VGG setting
LANDSCAPE = ["loss_range", "grad_predictiveness", "beta_smoothness", "grad_l2"]
LANDSCAPE_LEN = ["loss_range_len", "grad_predictiveness_len", "beta_smoothness_len"]
ICS = ["grad_diff_l2", "grad_diff_rel", "grad_cos"]


def cli(ap) -> None:
    ap.add_argument(
        "--cnn", action="store_true",
        help="also the small ReLU CNN (4 lrs x 5 seeds of a CNN does not fit the 30-minute "
        "budget on 2 CPU cores, so the default run is the MLP only)",
    )  # fmt: skip


def settings(args) -> dict[str, list[str]]:
    if args.smoke:  # one compile: the MLP with BN (the CNN only with --cnn, as in full runs)
        out = {
            "mlp": [
                "norm=bn",
                "data=digits",
                "steps=20",
                "chunk_steps=20",
                "eval_every=20",
                "probe.every=10",
                "probe.ics_every=10",
                *common.grid(args, LRS, SMOKE_LRS),
            ]
        }
        if args.cnn:
            out["cnn"] = [
                "norm=bn_noisy",
                *out["mlp"][1:],
                "model=cnn",
                "model.channels=[4,8]",
                "model.features=[16]",
                "data.probe_size=100",
            ]
        return out
    out = {
        "mlp": [
            f"norm={','.join(NORMS)}", "steps=1500", "chunk_steps=500", "eval_every=500",
            "probe.every=100", "probe.ics_every=100", *common.grid(args, LRS, SMOKE_LRS),
        ],
    }  # fmt: skip
    if args.cnn:
        out["cnn"] = [
            f"norm={','.join(NORMS)}", "model=cnn", "model.channels=[16,32]",
            "model.features=[128]", "steps=600", "chunk_steps=100", "eval_every=100",
            "probe.every=50", "probe.ics_every=50", "data.probe_size=200",
            *common.grid(args, LRS, SMOKE_LRS),
        ]  # fmt: skip
    return out


def runs_layers(ics: pd.DataFrame) -> list[str]:
    """The measured layers in network order: layer1, layer2, ..., head."""
    hidden = layer_order(n for n in ics["layer"].unique() if n.startswith("layer"))
    return [*hidden, "head"]


def drift(acts: pd.DataFrame, site: str, unit: int) -> pd.Series:
    """Per run: how far the mean of ``site`` (pooled, or one unit) moves between
    consecutive probes, |diff| averaged over probes and layers."""
    x = acts[(acts["site"] == site) & (acts["unit"] == unit) & (acts["stat"] == "mean")]
    w = x.pivot_table(index=["run", "layer", "step"], values="value")["value"]
    d = w.groupby(level=["run", "layer"]).diff().abs()
    return d.groupby(level="run").mean()


def late_medians(ics: pd.DataFrame, tail: float = 0.5) -> pd.DataFrame:
    """Per run, layer and statistic: the median over the last ``tail`` of the probes."""
    ics = ics[np.isfinite(ics["value"].astype(float))]
    cut = ics.groupby("run")["step"].transform("max") * (1 - tail)
    late = ics[ics["step"] >= cut]
    return late.groupby(["run", "layer", "stat"])["value"].median()


def main() -> None:
    args = common.parse_args(NAME, __doc__, cli)
    sweeps = {m: common.load(common.train(args, m, o)) for m, o in settings(args).items()}
    landscape, frames, res_parts = [], [], []
    for model, sw in sweeps.items():
        r = common.tidy(sw)
        n = r["seed"].nunique()
        norms = [k for k in NORMS if k in set(r["norm"])]
        total = int(sw.runs["steps"].max())
        where = f"{model.upper()} on {sw.runs['data'].iloc[0]}, SGD, {total} steps, {n} seeds"
        lr0 = PAPER_LR if PAPER_LR in set(r["lr"]) else float(r["lr"].min())

        def at(t: pd.DataFrame, lr0: float = lr0) -> pd.DataFrame:
            return t[np.isclose(t["optimizer.lr"], lr0)].assign(label=lambda d: d["norm"])

        fig = plot.learning_curves(
            at(sw.scalars), title=f"standard vs BN vs noisy BN at lr {lr0:g}: mean and 95% band "
            f"over seeds ({where})",
        )  # fmt: skip
        common.save(fig, args, f"accuracy_{model}.png")
        fig = plot.sweep_summary(
            sw.runs, sw.scalars, x="optimizer.lr", hue="norm",
            title=f"final test accuracy vs lr (mean and 95% interval over seeds; * = best lr on "
            f"validation) ({where})",
        )  # fmt: skip
        common.save(fig, args, f"lr_sweep_{model}.png")
        acts = sw.activations
        fig = plot.drift_bands(
            at(acts[acts["site"] == "pre"]), "layer2", "pre", unit=-1, ncols=3, sharey=True,
            title=f"layer2 at lr {lr0:g}: 15/50/85th percentiles of the nonlinearity's input, all "
            f"units pooled, on the probe batch, mean and 95% band over seeds. Train-mode probes: a "
            f"BN unit's mean and std there ARE beta and gamma; noisy BN's include a fresh noise "
            f"draw ({where})",
        )  # fmt: skip
        common.save(fig, args, f"drift_{model}.png")
        fig = plot.layer_moments(
            at(acts), "pre", title=f"mean and std of every layer's nonlinearity input (pooled) "
            f"on the probe batch at lr {lr0:g}, 95% band over seeds ({where})",
        )  # fmt: skip
        common.save(fig, args, f"moments_{model}.png")
        ics = sw.ics
        later = [lay for lay in runs_layers(ics) if lay != "layer1"]  # layer1: 0 by definition
        fig = plot.layer_curves(
            at(ics), ICS, layers=later, logy=ICS[:2], smooth=1 if args.smoke else 3,
            title=f"gradient-ICS per layer at lr {lr0:g}: G at W(t) vs G' after the earlier "
            f"layers' update, on the batch step t+1 uses (ics_at=before); rolling median of 3, "
            f"mean and 95% band over seeds ({where})",
        )  # fmt: skip
        common.save(fig, args, f"ics_{model}.png")
        landscape.append(at(ics[ics["layer"] == "all"]).assign(layer=model))

        lm = late_medians(ics).unstack(["layer", "stat"])
        for lay in later:
            for stat in ICS:
                r[f"{lay}_{stat}"] = r["run"].map(lm.get((lay, stat)))
        for stat in LANDSCAPE + LANDSCAPE_LEN:
            r[stat] = r["run"].map(lm.get(("all", stat)))
        for lay_stat in ICS[:2]:
            r[f"mean_{lay_stat}"] = r[[f"{lay}_{lay_stat}" for lay in later]].mean(axis=1)
        r["drift_pre_mean_pooled"] = r["run"].map(drift(acts, "pre", -1))
        r["drift_pre_mean_unit0"] = r["run"].map(drift(acts, "pre", 0))
        r["drift_prenorm_mean_unit0"] = r["run"].map(drift(acts, "prenorm", 0))
        r["model"] = model
        frames.append(r)

        fig = common.lr_panels(
            r, {
                **{f"{lay}_grad_diff_rel": f"||G-G'||/||G||, {lay}" for lay in later},
                **{f"{lay}_grad_cos": f"cos(G, G'), {lay}" for lay in later},
                "mean_grad_diff_l2": "||G-G'|| (mean over layers)",
            }, f"gradient-ICS vs lr: medians over the second half of training, mean and 95% "
            f"interval over seeds ({where})", logy=False,
        )  # fmt: skip
        common.save(fig, args, f"ics_vs_lr_{model}.png")
        fig = common.lr_panels(
            r, {
                "loss_range": "loss range (0.5-4x lr*g)",
                "grad_predictiveness": "grad. predictiveness (0.5-4x lr*g)",
                "beta_smoothness": "beta-smoothness (0.5-4x lr*g)",
                "grad_l2": "||g||",
                "loss_range_len": "loss range (0.05-0.4 along g)",
                "grad_predictiveness_len": "grad. predictiveness (0.05-0.4)",
                "beta_smoothness_len": "beta-smoothness (0.05-0.4)",
            }, f"the landscape along the gradient vs lr: medians over the second half of "
            f"training, mean and 95% interval over seeds ({where})",
        )  # fmt: skip
        common.save(fig, args, f"landscape_vs_lr_{model}.png")

        best = common.best_lr(r)
        res_parts.append((model, where, norms, r, best, later))

    land = pd.concat(landscape, ignore_index=True)
    fig = plot.layer_curves(
        land, LANDSCAPE + LANDSCAPE_LEN[2:], layers=list(sweeps), sharex=False,
        logy=LANDSCAPE + LANDSCAPE_LEN[2:], smooth=1 if args.smoke else 3,
        title=f"the landscape along the gradient (Fig. 4) at lr {PAPER_LR:g}: loss range, "
        "gradient predictiveness, effective beta-smoothness at 0.5-4x the lr-scaled step, the "
        "gradient norm, and beta-smoothness at equal lengths 0.05-0.4 (rolling median of 3; "
        "mean and 95% band over seeds)",
    )  # fmt: skip
    common.save(fig, args, "landscape.png")

    res = common.Results(args, "Santurkar et al. 2018")
    for model, where, norms, r, best, later in res_parts:
        tables = [
            ("final_test_accuracy", "final test accuracy (* = the lr chosen on validation)"),
            ("drift_pre_mean_unit0", "drift of unit 0's pre mean per probe interval (|diff|, "
             "mean over probes and layers; train-mode: for bn this IS beta's change)"),
            ("drift_prenorm_mean_unit0", "the same for prenorm (Wx+b, BN's input)"),
            ("drift_pre_mean_pooled", "drift of the pooled pre mean per probe interval"),
            *[(f"{lay}_grad_diff_rel", f"||G-G'||/||G||, {lay}") for lay in later],
            *[(f"{lay}_grad_cos", f"cos(G, G'), {lay}") for lay in later],
            ("mean_grad_diff_l2", "||G-G'||, mean over layers"),
            ("loss_range", "loss range along the gradient, 0.5-4x lr*g"),
            ("grad_predictiveness", "gradient predictiveness (max ||grad change||), 0.5-4x lr*g"),
            ("beta_smoothness", "effective beta-smoothness, 0.5-4x lr*g"),
            ("grad_l2", "gradient norm ||g||"),
            ("loss_range_len", "loss range at equal lengths 0.05-0.4 along -g/||g||"),
            ("grad_predictiveness_len", "gradient predictiveness at equal lengths"),
            ("beta_smoothness_len", "effective beta-smoothness at equal lengths"),
        ]  # fmt: skip
        for col, what in tables:
            if col in r and r[col].notna().any():
                res.add(f"{model.upper()}: {what}", common.lr_table(
                    r, col, norms, best=best if col == "final_test_accuracy" else None))  # fmt: skip
        res.add(f"{model.upper()}: best lr on validation ({where})",
                ", ".join(f"{k}: {common.fmt_lr(v)}" for k, v in best.items()))  # fmt: skip
    res.write()
    df = pd.concat(frames, ignore_index=True)
    first = ["model", "norm", "lr", "seed", "data", "status", "steps", "final_test_accuracy",
             "final_val_accuracy", "final_train_loss"]  # fmt: skip
    rest = [
        c
        for c in df.columns
        if c not in first
        and (c.startswith(("layer", "head", "mean_", "drift_")) or c in LANDSCAPE + LANDSCAPE_LEN)
    ]
    df = df[first + rest + ["wall_time_s"]].sort_values(["model", "norm", "lr", "seed"])
    common.write_summary(df.replace([np.inf, -np.inf], np.nan), args)


if __name__ == "__main__":
    main()
