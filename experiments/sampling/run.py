"""How far are conv sites' sampled percentiles from the exact ones?

    uv run python experiments/sampling/run.py

At conv sites bnlab computes the percentiles over ``probe.sample`` = 2,048 fixed
positions (example x height x width, all channels) of the probe batch, not over every
value (``probe.sample=null``). This trains the small CNN (``model=cnn``, with and
without BN) on digits (8x8 images; a 250-example probe batch has 16,000 positions, so
2,048 are a sample) for 100 steps twice per seed, once with the default sample
and once exact; the training is the same (the sample touches only the probes), so the
two records differ only in the sampled statistics. Writes ``sampling.csv``: one row per
norm x seed x conv site x unit (-1: pooled; 0: feature map 0 alone) x
percentile, over every probe step: the largest and the median
|sampled - exact|, and the largest of it divided by the site's exact p15-p85 width.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import pandas as pd  # noqa: E402

NAME = "sampling"


def pooled(sweep) -> pd.DataFrame:
    a = sweep.activations
    a = a[a["unit"].isin([-1, 0]) & a["layer"].isin(["layer1", "layer2"])]
    return a.pivot_table(index=["norm", "seed", "layer", "site", "unit", "step"], columns="stat",
                         values="value")  # fmt: skip


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    run = ["model=cnn", "norm=none,bn", "sweep.seeds=3", "optimizer.lr=0.1"]
    run += (["data=digits", "steps=10", "chunk_steps=10", "eval_every=10", "probe.every=5"]
            if args.smoke else
            ["data=digits", "data.probe_size=250", "steps=100", "chunk_steps=100", "eval_every=100",
             "probe.every=25"])  # fmt: skip
    s = pooled(common.load(common.train(args, "sampled", [*run, "probe.sample=2048"])))
    e = pooled(common.load(common.train(args, "exact", [*run, "probe.sample=null"])))
    width = (e["p85"] - e["p15"]).rename("width")
    rows = []
    for p in ("p15", "p50", "p85"):
        err = (s[p] - e[p]).abs()
        df = pd.DataFrame({"err": err, "rel": err / width}).reset_index()
        for (norm, seed, layer, site, unit), g in df.groupby(
            ["norm", "seed", "layer", "site", "unit"]
        ):
            rows.append(dict(norm=norm, seed=int(seed), site=f"{layer}/{site}", unit=int(unit), stat=p,
                             max_abs_error=g["err"].max(), median_abs_error=g["err"].median(),
                             max_error_over_width=g["rel"].max()))  # fmt: skip
    common.write_summary(pd.DataFrame(rows), args, "sampling.csv")


if __name__ == "__main__":
    main()
