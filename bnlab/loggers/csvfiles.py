"""CSV files: the record's tables, row for row, beside the run."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.loggers.base import Sink
from bnlab.record.tables import COLUMNS


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
