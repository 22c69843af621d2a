"""Fig. 1(b, c) again, scale-free, at the paper's lr and at the validation-best lr,
and what the learned gamma/beta represent.

    uv run python experiments/ioffe2015_fig1/drift.py          # 2 jobs of 2 lrs x 5 seeds
    uv run python experiments/ioffe2015_fig1/drift.py --smoke  # seconds, data=digits

The Fig. 1 MLP (``experiment=ioffe2015_fig1``, 3,000 steps, Fashion-MNIST) with
``norm=none`` and ``norm=bn`` at lr 0.5 (the paper's) and lr 2 (both variants' best on
validation in ``run.py``), 5 seeds, probes every 250 steps tracking 20 units of every
layer; with ``--eval`` BN again with eval-mode probes (its running averages; one more
job, left out of the committed tables to fit the budget). Writes, one row per run and
view (``none:pre``, ``bn:pre``, ``bn:prenorm``; ``bn:pre_eval``, BN's ``pre`` with
eval-mode probes, with ``--eval``):

- ``drift.csv``: for ``layer3``'s 20 tracked units, the median over units of
  ``shift`` = |p50(step 3000) - p50(step 500)|, of ``width`` = p85 - p15 at step 500,
  and of ``scaled_shift`` = shift / width (a shift in units of the unit's own spread,
  comparable across nets whose activations have different scales);
- ``gamma_beta.csv``: for BN (train-mode probes, where a unit's ``pre`` mean and std on
  the probe batch ARE its beta and gamma) per layer and step, the median over units of
  gamma / sd and of |beta - mu| / sd, with mu and sd the mean and std of the same unit's
  un-normalized input (``prenorm``, Wx+b): BN with gamma = sd and beta = mu is the
  identity (Ioffe & Szegedy 2015, Sec. 3); 1 and 0 mean the layer has learned it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnlab.analysis import plot  # noqa: E402

NAME = "ioffe2015_fig1"
LRS, SMOKE_LRS = [0.5, 2.0], [0.5, 2.0]
LAYER = "layer3"
EARLY = 500


def per_unit(acts: pd.DataFrame) -> pd.DataFrame:
    u = acts[acts["unit"] >= 0]
    return u.pivot_table(
        index=["norm", "optimizer.lr", "seed", "layer", "site", "unit", "step"],
        columns="stat", values="value",
    ).reset_index()  # fmt: skip


def drift_rows(w: pd.DataFrame, view: str, early: int) -> list[dict]:
    rows = []
    w = w[w["layer"] == LAYER]
    for (lr, seed), g in w.groupby(["optimizer.lr", "seed"]):
        per = []
        for _, h in g.groupby("unit"):
            h = h.sort_values("step")
            e, f = h[h["step"] <= early].iloc[-1], h.iloc[-1]
            width = e["p85"] - e["p15"]
            shift = abs(f["p50"] - e["p50"])
            per.append((shift, width, shift / width))
        a = np.median(np.array(per), axis=0)
        rows.append(dict(view=view, lr=lr, seed=seed, shift=a[0], width=a[1], scaled_shift=a[2]))
    return rows


def figure(acts: pd.DataFrame, eval_acts: pd.DataFrame | None, args) -> None:
    """Fig. 1(b, c) at both lrs: pooled percentiles of layer3 per view, a panel per view
    x lr (the paper's lr 0.5 on top, the validation-best lr 2 below)."""
    parts = []
    for lr in LRS:
        for view, a, norm, site in (
            ("none: pre", acts, "none", "pre"), ("bn: pre", acts, "bn", "pre"),
            ("bn: prenorm", acts, "bn", "prenorm"), ("bn: pre, eval-mode", eval_acts, "bn", "pre"),
        ):  # fmt: skip
            if a is None:
                continue
            sel = a[(a["norm"] == norm) & (a["site"] == site) & np.isclose(a["optimizer.lr"], lr)]
            parts.append(sel.assign(label=f"{view}, lr {lr:g}", site="x"))
    pooled = pd.concat(parts, ignore_index=True)
    fig = plot.drift_bands(
        pooled[pooled["unit"] == -1], LAYER, "x", ncols=3 if eval_acts is None else 4,
        sharey=False,
        title=f"Fig. 1(b, c) at the paper's lr 0.5 (top) and the validation-best lr 2 (bottom): "
        f"15/50/85th percentiles of {LAYER}'s inputs, all units pooled, on the probe batch; "
        f"mean and 95% t band over {pooled['seed'].nunique()} seeds",
    )  # fmt: skip
    common.save(fig, args, f"drift_{LAYER}_pooled_both_lrs.png")


def main() -> None:
    args = common.parse_args(
        NAME,
        __doc__,
        extra=lambda ap: ap.add_argument(
            "--eval",
            action="store_true",
            help="also BN with eval-mode probes (one more job; not in the committed tables)",
        ),
    )
    if args.smoke:
        steps, early = ["data=digits", "steps=40", "chunk_steps=20", "eval_every=20",
                        "probe.every=10"], 10  # fmt: skip
    else:
        steps, early = ["data=fashion_mnist", "steps=3000", "chunk_steps=500", "eval_every=500",
                        "probe.every=250"], EARLY  # fmt: skip
    base = ["experiment=ioffe2015_fig1", *steps, "probe.units=[" + ",".join(map(str, range(20))) + "]",
            *common.grid(args, LRS, SMOKE_LRS)]  # fmt: skip
    tr_sweep = common.load(common.train(args, "drift", ["norm=none,bn", *base]))
    ev_acts = None
    if args.eval:
        eval_over = ["norm=bn", *base, "probe.bn_mode=eval"]
        ev_acts = common.load(common.train(args, "drift_eval", eval_over)).activations
    figure(tr_sweep.activations, ev_acts, args)
    train = per_unit(tr_sweep.activations)
    rows = []
    for view, w in (
        ("none:pre", train[(train["norm"] == "none") & (train["site"] == "pre")]),
        ("bn:pre", train[(train["norm"] == "bn") & (train["site"] == "pre")]),
        ("bn:prenorm", train[(train["norm"] == "bn") & (train["site"] == "prenorm")]),
    ):
        rows += drift_rows(w, view, early)
    if ev_acts is not None:
        ev = per_unit(ev_acts)
        rows += drift_rows(ev[ev["site"] == "pre"], "bn:pre_eval", early)
    d = pd.DataFrame(rows).assign(seed=lambda x: x["seed"].astype(int))
    common.write_summary(d.sort_values(["view", "lr", "seed"]), args, "drift.csv")

    bn = train[train["norm"] == "bn"]
    key = ["optimizer.lr", "seed", "layer", "unit", "step"]
    pre = bn[bn["site"] == "pre"].set_index(key)
    raw = bn[bn["site"] == "prenorm"].set_index(key)
    j = pd.DataFrame(
        {"gamma": pre["std"], "beta": pre["mean"], "mu": raw["mean"], "sd": raw["std"]}
    )
    j["gamma_over_sd"] = j["gamma"] / j["sd"]
    j["beta_offset"] = (j["beta"] - j["mu"]).abs() / j["sd"]
    g = j.groupby(["optimizer.lr", "seed", "layer", "step"])[["gamma_over_sd", "beta_offset", "sd"]]
    gb = g.median().reset_index().rename(columns={"optimizer.lr": "lr", "sd": "prenorm_sd"})
    common.write_summary(gb.assign(seed=lambda x: x["seed"].astype(int)), args, "gamma_beta.csv")


if __name__ == "__main__":
    main()
