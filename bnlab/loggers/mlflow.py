"""MLflow: one MLflow run per member."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnlab.loggers.base import Sink, tagged


def flat(d: Any, prefix: str = "") -> dict[str, str]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': '1'}`` (MLflow params are flat strings)."""
    if not isinstance(d, dict):
        return {prefix: str(d)}
    out: dict[str, str] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


class Mlflow(Sink):
    """One MLflow run per member in experiment ``experiment`` at ``tracking_uri``: the
    flattened config as params, every row as a metric at its step, the sweep group
    and the run dir as tags; ended FINISHED, FAILED (diverged) or KILLED."""

    BATCH = 1000  # metrics per log_batch call (MLflow's limit)

    def __init__(self, cfg: Any, info: dict, floor: int) -> None:
        import logging

        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up notes

        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
        tags = {"bnlab.run_dir": str(Path(info["dir"]).resolve())}
        if info["group"]:
            tags["bnlab.group"] = info["group"]
        self.run_id = self.client.create_run(exp_id, run_name=info["name"], tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in flat(info["config"]).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.pending: list = []

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        self.pending.append(tagged(table, cols))

    def flush(self) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [
            self.Metric(t, v, now, int(s))
            for steps, tags, values in self.pending
            for s, t, v in zip(steps.tolist(), tags, values.tolist(), strict=True)
        ]
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.BATCH])
        self.pending = []

    def close(self, summary: dict[str, Any]) -> None:
        self.flush()
        status = summary.get("status", "interrupted")
        self.client.set_tag(self.run_id, "bnlab.status", status)
        end = {"finished": "FINISHED", "diverged": "FAILED"}.get(status, "KILLED")
        self.client.set_terminated(self.run_id, status=end)
