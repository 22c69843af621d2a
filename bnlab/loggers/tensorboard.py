"""TensorBoard: event files through tensorboardX (no TensorFlow)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.loggers.base import Sink, by_step, edges, tagged


class TensorBoard(Sink):
    """Event files in ``<run dir>/<dir>/`` (``<run dir>/<dir>/<name>/`` for a run with
    overrides, so TensorBoard's run name carries them: ``0/tensorboard/norm=bn,lr=0.1``)
    through tensorboardX (no TensorFlow). A chunk's rows go out as one event per step;
    a resumed run purges the events after its start. The percentiles of each site are
    one multi-line chart (Custom Scalars), and at the end the run's overrides and final
    metrics are its hparams (the HParams tab compares the runs of a sweep)."""

    histograms_wanted = True

    def __init__(self, cfg: Any, info: dict, floor: int) -> None:
        from tensorboardX import SummaryWriter
        from tensorboardX.proto.summary_pb2 import Summary

        self.Summary = Summary
        logdir = Path(info["dir"]) / cfg.dir
        if info.get("overrides"):
            logdir = logdir / info["name"]
        self.overrides = dict(info.get("overrides") or {})
        self.bands: dict[str, list[str]] = {}  # a site's percentile tags: one chart
        self.writer = SummaryWriter(
            logdir=str(logdir), purge_step=floor + 1, flush_secs=10, max_queue=1000
        )
        self.pending: list = []

    def rows(self, table: str, cols: dict[str, np.ndarray]) -> None:
        self.pending.append(tagged(table, cols))

    def flush(self) -> None:
        new = False
        for _, tags, _ in self.pending:
            for t in dict.fromkeys(tags):
                m = PERCENTILE.fullmatch(t)
                if m and t not in self.bands.setdefault(m.group(1), []):
                    self.bands[m.group(1)].append(t)
                    new = True
        if new:  # Custom Scalars: one chart per site with its percentiles
            charts = {
                site: ["Multiline", sorted(tags, key=_pct)] for site, tags in self.bands.items()
            }
            self.writer.add_custom_scalars({"percentiles": charts})
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
        final = {k: float(v) for k, v in (summary.get("final") or {}).items()
                 if isinstance(v, int | float) and np.isfinite(v)}  # fmt: skip
        if self.overrides and final:
            from tensorboardX.summary import hparams

            fw = self.writer._get_file_writer()
            for part in hparams({k: _value(v) for k, v in self.overrides.items()}, final):
                fw.add_summary(part)
        self.writer.close()


PERCENTILE = re.compile(r"(acts/.+/[^/]+)/p(\d+(?:\.\d+)?)")  # pooled, and per tracked unit


def _pct(tag: str) -> float:
    return float(tag.rsplit("/p", 1)[1])


def _value(v: str) -> float | str:
    """An override's value as hparams shows it: a number where it is one."""
    try:
        return float(v)
    except ValueError:
        return v
