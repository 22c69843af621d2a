"""Ioffe & Szegedy 2015, Fig. 1: the 784-100-100-100-10 sigmoid MLP with and without BN.

    uv run python experiments/ioffe2015_fig1/run.py            # 3 x 50,000 steps
    uv run python experiments/ioffe2015_fig1/run.py --smoke    # seconds, on data=digits

Trains norm=none, bn and bn_noaffine (BN without gamma/beta) with batch 60, SGD lr
0.5, probes every 50 steps, on MNIST when its files are available offline and on
Fashion-MNIST otherwise; writes figures/test_accuracy.png, figures/drift_*.png and
summary.csv. See README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnlab import data, plot  # noqa: E402

NAME = "ioffe2015_fig1"
NORMS = ["none", "bn", "bn_noaffine"]


def dataset(smoke: bool) -> str:
    """MNIST if its files are here (never downloaded: the run must work offline)."""
    if smoke:
        return "digits"
    try:
        data.load("mnist", download=False)
        return "mnist"
    except data.DataError:
        return "fashion_mnist"


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    ds = dataset(args.smoke)
    if args.smoke:
        steps = ["steps=200", "chunk_steps=100", "eval_every=100", "probe.every=50"]
    else:
        steps = ["steps=50000", "chunk_steps=500", "eval_every=500", "probe.every=50"]
    runs = common.train(
        args, "fig1", [f"norm={','.join(NORMS)}", f"data={ds}", "experiment=ioffe2015_fig1", *steps]
    )
    sweep = common.load(runs)
    data_name = sweep.runs["data"].iloc[0]
    where = f"{data_name}, batch 60, SGD lr 0.5"

    sc = sweep.scalars
    fig = plot.learning_curves(
        sc, title=f"Fig. 1(a): test accuracy (every 500 steps; y zoomed) and train loss "
        f"(mean over each 50 steps) ({where})",
    )  # fmt: skip
    later = sc[(sc["name"] == "test_accuracy") & (sc["step"] > 0)]["value"]  # skip step 0
    if len(later):
        fig.axes[0].set_ylim(max(0.0, later.quantile(0.05) - 0.03), later.max() + 0.01)
    common.save(fig, args, "test_accuracy.png")
    acts = sweep.activations
    layer = "layer3"
    pre = acts[acts["site"] == "pre"]
    for unit, what in ((0, "one sigmoid (unit 0)"), (-1, "all 100 sigmoids pooled")):
        fig = plot.drift_bands(
            pre, layer, "pre", unit=unit, ncols=3, sharey=True,
            title=f"Fig. 1(b, c): 15/50/85th percentiles of the input to {what} of {layer} "
            f"over training, on the probe batch ({where})",
        )  # fmt: skip
        common.save(fig, args, f"drift_{layer}_{'unit0' if unit == 0 else 'pooled'}.png")

    rows = []
    total = int(sweep.runs["step"].max())
    early = max(1000, total // 50) if total > 1000 else total // 4
    for norm in NORMS:
        r = sweep.runs[sweep.runs["label"] == norm].iloc[0]
        acc = sc[(sc["label"] == norm) & (sc["name"] == "test_accuracy")].set_index("step")["value"]
        u = pre[(pre["label"] == norm) & (pre["layer"] == layer) & (pre["unit"] == 0)]
        w = u.pivot_table(index="step", columns="stat", values="value").sort_index()
        at = lambda s, w=w: w.loc[w.index[w.index <= s][-1]]  # noqa: E731
        late = w[w.index >= early]
        rows.append(
            dict(
                norm=norm, data=data_name, status=r["status"], steps=int(r["step"]),
                final_test_accuracy=acc.iloc[-1], best_test_accuracy=acc.max(),
                mean_test_accuracy_last_5_evals=acc.iloc[-5:].mean(),
                first_step_acc_ge_0_8=float(acc.index[acc >= 0.8][0]) if (acc >= 0.8).any() else np.nan,
                unit0_p15_early=at(early)["p15"], unit0_p50_early=at(early)["p50"],
                unit0_p85_early=at(early)["p85"], unit0_p15_final=w["p15"].iloc[-1],
                unit0_p50_final=w["p50"].iloc[-1], unit0_p85_final=w["p85"].iloc[-1],
                unit0_p50_range_after_early=late["p50"].max() - late["p50"].min(),
                early_step=early, wall_time_s=r["wall_time_s"],
            )
        )  # fmt: skip
    common.write_summary(pd.DataFrame(rows), args)


if __name__ == "__main__":
    main()
