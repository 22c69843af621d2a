"""Bjorck et al. 2018: do unnormalized activations grow with depth? On the network the
claim was made about (a ResNet with He init) and on a plain ReLU MLP as a contrast.

    uv run python experiments/bjorck2018_depth/run.py          # 4 jobs of 5 seeds
    uv run python experiments/bjorck2018_depth/run.py --smoke  # seconds, data=digits

ResNet-20 (He-normal init, option-A shortcuts) with ``norm=none`` and ``norm=bn``, SGD
with momentum 0.9 at lr 0.005 for both (``norm=none`` diverges at step 2 at BN's usual
0.05), 5 seeds each (single runs: 5 vectorized ResNets do not fit in memory here),
50 steps, probes at steps 0, 25 and 50 on 250
test images; and the
6-hidden-layer ReLU MLP of ``experiments/lr_tolerance`` (LeCun-normal init) with and
without BN at lr 0.1, 800 steps. Writes ``depth.csv``: one row per model x norm x seed x step x
depth, the std (on the probe batch, all units and examples pooled) of the residual
stream entering each block (``stage*/block*/conv1/in``; last: ``head/in``) or of each
hidden layer's output (``layer*/post``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import pandas as pd  # noqa: E402

NAME = "bjorck2018_depth"
RESNET_STEPS, MLP_STEPS = 50, 800  # ResNet: 50 steps fit the budget on 2 busy cores
# a 250-example probe batch, probed inline (less memory)
RESNET = ["model=resnet", "optimizer=momentum", "optimizer.lr=0.005", "data.probe_size=250",
          "probe.overlap=false",
          "probe.sites=['*conv1/in','head/in']"]  # fmt: skip
MLP = ["model.activation=relu", "model.init_std=null", "model.features=[100,100,100,100,100,100]",
       "optimizer.lr=0.1", "probe.sites=['*/post']"]  # fmt: skip


def depth_of(layer: str, site: str) -> tuple[int, str] | None:
    """(depth index, name) of a probed site; None for sites not on the depth axis."""
    m = re.fullmatch(r"stage(\d)/block(\d)/conv1", layer)
    if m and site == "in":
        s, b = int(m[1]), int(m[2])
        return (s - 1) * 3 + b, f"{layer}/in"
    if layer == "head" and site == "in":
        return 10, "head/in"
    m = re.fullmatch(r"layer(\d+)", layer)
    if m and site == "post":
        return int(m[1]), f"{layer}/post"
    return None


def tidy(model: str, sweep) -> pd.DataFrame:
    """One row per run x step x depth: the pooled std there, the run's status and its
    final test accuracy."""
    a = sweep.activations
    a = a[(a["unit"] == -1) & (a["stat"] == "std")]
    runs = sweep.runs.set_index("run")
    rows = []
    for r in a.to_dict("records"):
        d = depth_of(r["layer"], r["site"])
        if d is None:
            continue
        run = runs.loc[r["run"]]
        rows.append(dict(model=model, norm=r["norm"], lr=float(r["optimizer.lr"]),
                         seed=int(r["seed"]), step=int(r["step"]), depth=d[0], site=d[1],
                         std=float(r["value"]), status=run["status"],
                         final_test_accuracy=run.get("final_test_accuracy")))  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    seeds = common.SMOKE_SEEDS if args.smoke else common.SEEDS
    if args.smoke:
        rs = ["data=digits", "steps=4", "chunk_steps=4", "eval_every=4", "probe.every=4"]
        ms = rs
    else:
        rs = [f"steps={RESNET_STEPS}", f"chunk_steps={RESNET_STEPS}",
              f"eval_every={RESNET_STEPS}", f"probe.every={RESNET_STEPS // 2}"]  # fmt: skip
        ms = [f"steps={MLP_STEPS}", "chunk_steps=200", f"eval_every={MLP_STEPS}", "probe.every=200"]
    parts = []
    # the ResNet seeds as single runs (one process, one compile per norm): 5 vectorized
    # ResNet members took over 15 GB and were killed on this 23 GB machine
    each = ",".join(str(i) for i in range(seeds))
    for model, base, steps, rep in (
        ("resnet20", RESNET, rs, f"seed={each}"), ("mlp6", MLP, ms, f"sweep.seeds={seeds}"),
    ):  # fmt: skip
        d = common.train(args, model, ["norm=none,bn", *base, *steps, rep])
        parts.append(tidy(model, common.load(d)))
    out = pd.concat(parts, ignore_index=True).sort_values(
        ["model", "norm", "seed", "step", "depth"]
    )
    common.write_summary(out, args, "depth.csv")


if __name__ == "__main__":
    main()
