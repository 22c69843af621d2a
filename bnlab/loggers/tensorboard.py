"""TensorBoard: event files through tensorboardX (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnlab.loggers.base import Sink, by_step, edges, tagged


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
