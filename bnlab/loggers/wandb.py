"""Weights & Biases: one W&B run per member."""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bnlab.loggers.base import STATUS_EXIT, Sink, by_step, edges, tagged


def wandb_logged_in() -> bool:
    """Whether W&B has an API key here (``WANDB_API_KEY``, or ``wandb login``'s netrc
    entry for ``WANDB_BASE_URL``), without asking the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Wandb(Sink):
    """One W&B run per member in ``<run dir>/wandb/``: its config as the run's config,
    grouped by sweep, the record's step as every metric's x-axis (``step``), so rows
    may arrive out of order (a chunk's activation rows come one chunk late)."""

    histograms_wanted = True

    def __init__(self, cfg: Any, info: dict, floor: int) -> None:
        import wandb

        self.wandb = wandb
        mode = str(cfg.mode)
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, dir=str(info["dir"]), name=info["name"],
            group=info["group"], config=info["config"], tags=list(cfg.tags), mode=mode,
            reinit="create_new", job_type="train",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                    disable_git=True, save_code=False),
        )  # fmt: skip
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.pending: list = []

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        self.pending.append(tagged(table, cols))

    def flush(self) -> None:
        for step, values in by_step(self.pending).items():
            self.run.log({"step": step, **values})
        self.pending = []

    def histograms(self, step: int, hists: dict[str, dict[str, Any]]) -> None:
        out: dict[str, Any] = {"step": step}
        for site, h in hists.items():
            bounds = np.concatenate([[float(h["min"])], edges(h)])
            out[f"hist/{site}"] = self.wandb.Histogram(
                np_histogram=(np.asarray(h["counts"]), bounds)
            )
        self.run.log(out)

    def close(self, summary: dict[str, Any]) -> None:
        self.flush()
        status = summary.get("status", "interrupted")
        self.run.summary.update({"status": status, "diverged_at": summary.get("diverged_at"),
                                 "steps_per_sec": summary.get("steps_per_sec")})  # fmt: skip
        self.run.finish(exit_code=STATUS_EXIT.get(status, 1))
