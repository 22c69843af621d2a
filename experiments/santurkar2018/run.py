"""Santurkar et al. 2018: standard vs BN vs noisy BN; gradient-ICS; the loss landscape.

    uv run python experiments/santurkar2018/run.py          # MLP + CNN, ~20 min on 2 cores
    uv run python experiments/santurkar2018/run.py --smoke  # a minute, data=digits

Trains norm=none, bn and bn_noisy with the same SGD learning rate (0.1, the paper's
VGG setting) for two models on Fashion-MNIST: the Fig. 1 MLP (784-100-100-100-10,
sigmoid) and a small ReLU CNN (conv 16, conv 32, dense 128). Every run measures the
gradient-ICS of every layer and the landscape along the gradient every
``probe.ics_every`` steps (bnlab.probe). Writes, per model, figures/accuracy_*.png,
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

from bnlab import plot  # noqa: E402
from bnlab.runs import layer_order  # noqa: E402

NAME = "santurkar2018"
NORMS = ["none", "bn", "bn_noisy"]
LANDSCAPE = ["loss_range", "grad_predictiveness", "beta_smoothness", "grad_l2"]


def settings(smoke: bool) -> dict[str, list[str]]:
    common_ = ["optimizer.lr=0.1", f"norm={','.join(NORMS)}"]
    if smoke:
        quick = ["data=digits", "chunk_steps=100", "eval_every=100", "probe.every=50"]
        return {
            "mlp": [*common_, *quick, "steps=200", "probe.ics_every=100"],
            "cnn": [
                *common_, *quick[:1], "model=cnn", "model.channels=[4,8]", "model.features=[16]",
                "steps=50", "chunk_steps=50", "eval_every=50", "probe.every=25",
                "probe.ics_every=25", "data.probe_size=100",
            ],
        }  # fmt: skip
    return {
        "mlp": [
            *common_, "steps=10000", "chunk_steps=1000", "eval_every=1000", "probe.every=100",
            "probe.ics_every=200",
        ],
        "cnn": [
            *common_, "model=cnn", "model.channels=[16,32]", "model.features=[128]",
            "steps=600", "chunk_steps=100", "eval_every=100", "probe.every=50",
            "probe.ics_every=50", "data.probe_size=200",
        ],
    }  # fmt: skip


def runs_layers(ics: pd.DataFrame) -> list[str]:
    """The measured layers in network order: layer1, layer2, ..., head."""
    hidden = layer_order(n for n in ics["layer"].unique() if n.startswith("layer"))
    return [*hidden, "head"]


def drift(acts: pd.DataFrame, unit: int = -1) -> pd.DataFrame:
    """Per run and layer: how far the mean and std of the nonlinearity's input (``pre``;
    pooled, or of one unit) move between consecutive probes, on average (|diff|)."""
    pre = acts[
        (acts["site"] == "pre") & (acts["unit"] == unit) & acts["stat"].isin(["mean", "std"])
    ]
    w = pre.pivot_table(index=["label", "layer", "step"], columns="stat", values="value")
    d = w.groupby(level=["label", "layer"]).diff().abs()
    return d.groupby(level=["label", "layer"]).mean().rename(columns=lambda c: f"drift_{c}")


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    sweeps = {}
    for model, overrides in settings(args.smoke).items():
        sweeps[model] = common.load(common.train(args, model, overrides))

    landscape = []
    rows = []
    for model, sw in sweeps.items():
        data_name = sw.runs["data"].iloc[0]
        where = f"{model.upper()} on {data_name}, SGD lr 0.1"
        fig = plot.learning_curves(sw.scalars, title=f"standard vs BN vs noisy BN ({where})")
        common.save(fig, args, f"accuracy_{model}.png")
        acts = sw.activations
        layer = "layer2"
        fig = plot.drift_bands(
            acts[acts["site"] == "pre"], layer, "pre", unit=0, ncols=3, sharey=True,
            title=f"{layer}, unit 0: 15/50/85th percentiles of the nonlinearity's input on "
            f"the probe batch (noisy BN: with its noise, redrawn every step) ({where})",
        )  # fmt: skip
        common.save(fig, args, f"drift_{model}.png")
        fig = plot.layer_moments(
            acts, "pre",
            title=f"mean and std of every layer's nonlinearity input on the probe batch ({where})",
        )  # fmt: skip
        common.save(fig, args, f"moments_{model}.png")
        ics = sw.ics
        later = [lay for lay in runs_layers(ics) if lay != "layer1"]  # layer1: 0 by definition
        fig = plot.layer_curves(
            ics, ["grad_diff_l2", "grad_cos"], layers=later, logy=["grad_diff_l2"],
            smooth=5 if not args.smoke else 1,
            title=f"gradient-ICS per layer: G vs G' after the earlier layers' update, on the "
            f"same batch (layer1: 0 and 1 by definition; rolling median of 5, raw faint) "
            f"({where})",
        )  # fmt: skip
        common.save(fig, args, f"ics_{model}.png")
        landscape.append(ics[ics["layer"] == "all"].assign(layer=model))

        drifts, drifts0 = drift(acts), drift(acts, unit=0)
        summ = common.ics_summary(sw)
        for norm in NORMS:
            r = sw.runs[sw.runs["label"] == norm].iloc[0]
            row = dict(
                model=model, norm=norm, data=data_name, status=r["status"], steps=int(r["step"]),
                final_test_accuracy=common.final(sw, norm, "test_accuracy"),
                final_train_loss=common.final(sw, norm, "train_loss"),
            )  # fmt: skip
            d = drifts.loc[norm]
            row["drift_mean_avg_layers"] = d["drift_mean"].mean()
            row["drift_std_avg_layers"] = d["drift_std"].mean()
            d0 = drifts0.loc[norm]
            row["unit0_drift_mean_avg_layers"] = d0["drift_mean"].mean()
            row["unit0_drift_std_avg_layers"] = d0["drift_std"].mean()
            s = summ.loc[norm]
            for lay in s.index:
                if lay == "all":
                    for stat in LANDSCAPE:
                        row[f"{stat}_late_median"] = s.loc[lay, stat]
                else:
                    row[f"{lay}_grad_diff_l2_late_median"] = s.loc[lay, "grad_diff_l2"]
                    row[f"{lay}_grad_cos_late_median"] = s.loc[lay, "grad_cos"]
            row["wall_time_s"] = r["wall_time_s"]
            rows.append(row)
    land = pd.concat(landscape, ignore_index=True)
    fig = plot.layer_curves(
        land, LANDSCAPE, layers=list(sweeps), logy=LANDSCAPE, sharex=False,
        smooth=5 if not args.smoke else 1,
        title="the landscape along the gradient (Fig. 4): loss range, gradient "
        "predictiveness, effective beta-smoothness, and the gradient norm, at 0.5-4x the "
        "lr-scaled gradient step (rolling median of 5, raw faint)",
    )  # fmt: skip
    common.save(fig, args, "landscape.png")
    df = pd.DataFrame(rows)
    first = ["model", "norm", "data", "status", "steps", "final_test_accuracy", "final_train_loss"]
    df = df[first + [c for c in df.columns if c not in first]]
    common.write_summary(df.replace([np.inf, -np.inf], np.nan), args)


if __name__ == "__main__":
    main()
