"""Ioffe & Szegedy 2015, Sec. 2: normalize, but treat the batch statistics as constants.

    uv run python experiments/ioffe2015_sec2_statgrad/run.py          # 3 x 20,000 steps
    uv run python experiments/ioffe2015_sec2_statgrad/run.py --smoke  # seconds, data=digits

The Fig. 1 MLP (sigmoid, batch 60, SGD lr 0.5) with BN without gamma/beta
(norm.use_scale=false norm.use_bias=false, so the linear layer's bias b is the only
shift before the normalization, as in the paper's argument), three ways:

- ``bn``: backpropagate through the batch mean and variance (the fix);
- ``bn_nostatgrad_meanonly``: x - E[x], E[x] a constant in the gradient;
- ``bn_nostatgrad``: (x - E[x]) / sd[x], both constants in the gradient.

Writes figures/bias_and_weights.png, figures/learning_curves.png and summary.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnlab import plot  # noqa: E402

NAME = "ioffe2015_sec2_statgrad"
NORMS = ["bn", "bn_nostatgrad_meanonly", "bn_nostatgrad"]


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
    if args.smoke:
        run = ["data=digits", "steps=200", "chunk_steps=100", "eval_every=100", "probe.every=50"]
    else:
        run = ["steps=20000", "chunk_steps=1000", "eval_every=1000", "probe.every=100"]
    runs = common.train(
        args, "statgrad",
        [f"norm={','.join(NORMS)}", "norm.use_scale=false", "norm.use_bias=false", *run],
    )  # fmt: skip
    sweep = common.load(runs)
    where = f"{sweep.runs['data'].iloc[0]}, Fig. 1 MLP, BN without gamma/beta, SGD lr 0.5"
    layers = with_bias_rms(sweep.layers)
    fig = plot.layer_curves(
        layers, ["bias_rms", "weight_norm"], logy=["weight_norm"],
        title=f"Sec. 2: the bias b before the normalization (rms over units) and the "
        f"weight norm, with and without backprop through the statistics ({where})",
    )  # fmt: skip
    common.save(fig, args, "bias_and_weights.png")
    fig = plot.learning_curves(sweep.scalars, title=f"learning curves ({where})")
    common.save(fig, args, "learning_curves.png")

    rows = []
    total = int(sweep.runs["step"].max())
    for norm in NORMS:
        r = sweep.runs[sweep.runs["label"] == norm].iloc[0]
        lay = layers[layers["label"] == norm]
        piv = lay.pivot_table(index="step", columns=["stat", "layer"], values="value").sort_index()
        tenth = piv.index[piv.index >= max(total // 10, 1)][0]
        b, wn = piv["bias_rms"], piv["weight_norm"]
        rows.append(
            dict(
                norm=norm, status=r["status"], steps=int(r["step"]),
                final_test_accuracy=common.final(sweep, norm, "test_accuracy"),
                final_train_loss=common.final(sweep, norm, "train_loss"),
                bias_rms_max_layer_final=b.iloc[-1].max(),
                bias_rms_growth_last_90pct=(b.iloc[-1] / b.loc[tenth]).max(),
                weight_norm_max_layer_final=wn.iloc[-1].max(),
                weight_norm_growth_last_90pct=(wn.iloc[-1] / wn.loc[tenth]).max(),
                wall_time_s=r["wall_time_s"],
            )
        )  # fmt: skip
    common.write_summary(pd.DataFrame(rows), args)


if __name__ == "__main__":
    main()
