"""Does a member's result depend on how many members share its vectorized program?

    uv run python experiments/ioffe2015_sec2_statgrad/sweep_shape.py

The Sec. 2 setup (sigmoid MLP, BN without gamma/beta, 2,000 steps) for the case at the
edge, ``norm=bn_nostatgrad`` (mean+scale, no stat-grad) at lr 5, seeds 0-4, trained four
ways: each seed as a single run (``optimizer.lr=5 seed=k``), the 5 seeds as one 5-member
sweep (``optimizer.lr=5 sweep.seeds=5``), inside the committed 20-member sweep
(``sweep.lr=[0.1,0.5,2,5] sweep.seeds=5``) and inside a 20-member sweep of 2 lrs x 10
seeds (``sweep.lr=[2,5] sweep.seeds=10``).
Writes ``sweep_shape.csv``: one row per shape x lr x seed (seeds 5-9 of the 10-seed
sweep too): status, the step it diverged at, final test accuracy and train loss, their
difference from the same seed's single run (lr 5), whether the final train loss equals
the single run's bit for bit, and the committed ``summary.csv``'s final train loss for
the same norm, lr and seed, and whether it agrees (to the csv's 6 digits). The
README states what differs (float32 rounding in a wider program, amplified by chaotic
training at large lr).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

NAME = "ioffe2015_sec2_statgrad"
BASE = ["norm=bn_nostatgrad", "norm.use_scale=false", "norm.use_bias=false", "steps=2000",
        "chunk_steps=500", "eval_every=500", "probe.every=250", "data.validation=5000"]  # fmt: skip
SHAPES = {  # shape -> (members in the program, overrides)
    "single": (1, ["optimizer.lr=5", "seed=0,1,2,3,4"]),
    "lr5_seeds5": (5, ["optimizer.lr=5", "sweep.seeds=5"]),
    "grid_4lr_5seeds": (20, ["sweep.lr=[0.1,0.5,2,5]", "sweep.seeds=5"]),
    "grid_2lr_10seeds": (20, ["sweep.lr=[2,5]", "sweep.seeds=10"]),
}


def main() -> None:
    args = common.parse_args(NAME, __doc__)
    parts = []
    for shape, (members, over) in SHAPES.items():
        d = common.train(args, f"shape_{shape}", [*BASE, *over])
        r = common.tidy(common.load(d))
        parts.append(r.assign(shape=shape, members=members))
    out = pd.concat(parts, ignore_index=True)
    single = out[out["shape"] == "single"].set_index(["norm", "lr", "seed"])
    key = pd.MultiIndex.from_frame(out[["norm", "lr", "seed"]])
    for col in ("final_test_accuracy", "final_train_loss"):
        ref = single[col].reindex(key).to_numpy()
        out[f"{col}_minus_single"] = out[col].to_numpy() - ref
    ref_loss = single["final_train_loss"].reindex(key).to_numpy()
    out["same_as_single"] = out["final_train_loss"].to_numpy() == ref_loss  # bit for bit
    # the committed run.py table (the same 20-member shape, trained with the code of then)
    com = pd.read_csv(args.out / "summary.csv").set_index(["norm", "lr", "seed"])
    com_loss = com["final_train_loss"].reindex(key).to_numpy()
    out["final_train_loss_committed"] = com_loss
    out["same_as_committed"] = np.isclose(out["final_train_loss"], com_loss, rtol=1e-5, atol=0)
    cols = ["norm", "lr", "seed", "shape", "members", "status", "diverged_at",
            "final_test_accuracy", "final_train_loss", "final_test_accuracy_minus_single",
            "final_train_loss_minus_single", "same_as_single", "final_train_loss_committed",
            "same_as_committed"]  # fmt: skip
    out = out[cols].sort_values(["norm", "lr", "seed", "members"])
    common.write_summary(out, args, "sweep_shape.csv")


if __name__ == "__main__":
    main()
