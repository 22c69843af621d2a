"""The loggers' backends (:mod:`bnlab.loggers`): TensorBoard, W&B, MLflow and CSV files.

Each is a :class:`~bnlab.loggers.Sink` of one member, made when its run starts with
``floor``, the step it starts after (-1 for a fresh run): rows up to it were sent by
an earlier process. Each imports its library only when chosen.
"""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bnlab.record import ACTIVATIONS, COLUMNS, ICS, LAYERS, SCALARS

PREFIX = {ACTIVATIONS: "acts", LAYERS: "layers", ICS: "ics"}

# --------------------------------------------------------------------------- rows and sinks


def _tag(table: str, row: dict[str, Any]) -> str:
    if table == SCALARS:
        return str(row["name"])
    if table == ACTIVATIONS:
        unit = int(row["unit"])
        sub = f"u{unit}/" if unit >= 0 else ""
        return f"acts/{row['layer']}/{row['site']}/{sub}{row['stat']}"
    return f"{PREFIX[table]}/{row['layer']}/{row['stat']}"


def tagged(table: str, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A block of a record table as ``(steps, tags, values)``, one tag per row. A
    block whose labels are one value repeated (as the host loop adds them) is tagged
    once."""
    steps, values = np.asarray(cols["step"]), np.asarray(cols["value"], np.float64)
    labels = {c: np.asarray(v) for c, v in cols.items() if c not in ("step", "value")}
    n = len(steps)
    if n and all(v.strides == (0,) or (v == v[0]).all() for v in labels.values()):
        return steps, [_tag(table, {c: v[0] for c, v in labels.items()})] * n, values
    return steps, [_tag(table, {c: v[i] for c, v in labels.items()}) for i in range(n)], values


def by_step(rows: list[tuple[np.ndarray, list[str], np.ndarray]]) -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` of tagged blocks (steps in order)."""
    out: dict[int, dict[str, float]] = {}
    for steps, tags, values in rows:
        for s, t, v in zip(steps.tolist(), tags, values.tolist(), strict=True):
            out.setdefault(int(s), {})[t] = v
    return dict(sorted(out.items()))


def edges(h: dict[str, Any]) -> np.ndarray:
    """The right edges of a :func:`bnlab.probe.histogram`'s buckets."""
    lo, hi, bins = float(h["min"]), float(h["max"]), len(h["counts"])
    width = hi - lo if hi > lo else 1.0
    return lo + width * np.arange(1, bins + 1) / bins


class Sink:
    """One logger of one member: takes new record rows, histograms, and a last word."""

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        """One new column block of ``table`` (only rows after the start)."""

    def histograms(self, step: int, hists: dict[str, dict[str, Any]]) -> None:
        """``{site: probe.histogram}`` (host arrays) at ``step``."""

    def flush(self) -> None:
        """The chunk's rows are all in."""

    def close(self, summary: dict[str, Any]) -> None:
        """The member is done (``summary`` as in its ``summary.json``)."""


STATUS_EXIT = {"finished": 0, "diverged": 1, "interrupted": 130}


class TensorBoard(Sink):
    """Event files in ``<run dir>/<dir>/`` through tensorboardX (no TensorFlow). A chunk's
    rows go out as one event per step; a resumed run purges the events after its start."""

    histograms_wanted = True

    def __init__(self, cfg: Any, info: dict, floor: int) -> None:
        from tensorboardX import SummaryWriter
        from tensorboardX.proto.summary_pb2 import Summary

        self.Summary = Summary
        logdir = Path(info["dir"]) / cfg.dir
        self.writer = SummaryWriter(
            logdir=str(logdir), purge_step=floor + 1, flush_secs=10, max_queue=1000
        )
        self.pending: list = []

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        self.pending.append(tagged(table, cols))

    def flush(self) -> None:
        fw = self.writer._get_file_writer()
        V = self.Summary.Value
        for step, values in by_step(self.pending).items():
            fw.add_summary(self.Summary(value=[V(tag=t, simple_value=v) for t, v in values.items()]),
                           step)  # fmt: skip
        self.pending = []

    def histograms(self, step: int, hists: dict[str, dict[str, Any]]) -> None:
        for site, h in hists.items():
            self.writer.add_histogram_raw(
                f"hist/{site}", min=float(h["min"]), max=float(h["max"]), num=float(h["num"]),
                sum=float(h["sum"]), sum_squares=float(h["sum_sq"]),
                bucket_limits=edges(h).tolist(), bucket_counts=np.asarray(h["counts"]).tolist(),
                global_step=step,
            )  # fmt: skip

    def close(self, summary: dict[str, Any]) -> None:
        self.flush()
        self.writer.close()


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


class Csv(Sink):
    """The record's tables as CSV files in ``<run dir>/<dir>/`` (same columns), appended
    at every chunk; a resumed run first drops the rows after its start."""

    def __init__(self, cfg: Any, info: dict, floor: int) -> None:
        self.dir = Path(info["dir"]) / cfg.dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Any] = {}
        self.writers: dict[str, Any] = {}
        for table, columns in COLUMNS.items():
            path = self.dir / table.replace(".parquet", ".csv")
            kept = _rows_up_to(path, floor)
            f = path.open("w", newline="")
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(kept)
            self.files[table], self.writers[table] = f, w

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        columns = [np.asarray(cols[c]).tolist() for c in COLUMNS[table]]
        self.writers[table].writerows(zip(*columns, strict=True))

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()

    def close(self, summary: dict[str, Any]) -> None:
        for f in self.files.values():
            f.close()


def _rows_up_to(path: Path, floor: int) -> list[list[str]]:
    """The data rows of an earlier CSV file with ``step <= floor`` (none for -1)."""
    if floor < 0 or not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if r and int(r[0]) <= floor]
