"""Whether a record's tables hold exactly the rows a checkpoint vouches for.

At every commit the digest of each table's rows up to the checkpoint's step goes into
the checkpoint's checksums (:mod:`bnlab.record.checkpoint`); a resume recomputes it
from the tables on disk, rows up to that step. A mismatch is named by
:func:`sequence_problems` (steps missing, repeated or partial); records written
before digests are checked by it alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.record.tables import ACTIVATIONS, COLUMNS, ICS, LAYERS, SCALARS


def table_digest(name: str, df: Any) -> dict[str, Any]:
    """``{'rows': n, 'sha256': ...}`` of a table's rows (columns of the schema, in order)."""
    h = hashlib.sha256()
    for c in COLUMNS[name]:
        col = df[c]
        if c in ("step", "unit"):
            h.update(np.ascontiguousarray(col.to_numpy(np.int64)).tobytes())
        elif c == "value":
            h.update(np.ascontiguousarray(col.to_numpy(np.float64)).tobytes())
        else:
            h.update("\0".join(map(str, col.tolist())).encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    return {"rows": len(df), "sha256": h.hexdigest()}


def ranges(steps: Any, every: int) -> str:
    """``[300, 325, 350, 700]`` (every 25) -> ``300-350, 700`` (three runs at most)."""
    steps = sorted(int(s) for s in steps)
    runs: list[list[int]] = []
    for s in steps:
        if runs and s - runs[-1][1] <= every:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:3])
    return text + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")


def sequence_problems(name: str, df: Any, step: int, every: int, ics_every: int) -> list[str]:
    """What is wrong with a table's rows up to ``step`` as a sequence: repeated rows,
    probe steps without rows, steps with fewer rows than the others."""
    df = df[df["step"] <= step]
    out = []
    keys = [c for c in COLUMNS[name] if c != "value"]
    dup = df.loc[df.duplicated(keys, keep=False), "step"].unique()
    if dup.size:
        out.append(f"{name} repeats rows of steps {ranges(dup, every)}")
    present = set(df["step"].unique().tolist())
    if name == ICS:
        last = max(present, default=-1)
        if last + ics_every - 1 < step:
            out.append(f"{name} ends at step {last}")
        return out
    missing = sorted(set(range(0, step + 1, every)) - present)
    if missing:
        out.append(f"{name} lacks steps {ranges(missing, every)}")
    if name in (ACTIVATIONS, LAYERS) and len(df):
        counts = df.groupby("step").size()
        partial = counts[counts < counts.max()].index
        if len(partial):
            out.append(f"{name} holds part of the rows of steps {ranges(partial, every)}")
    return out


def table_problems(
    run_dir: Path, step: int, digests: dict[str, Any] | None, every: int, ics_every: int
) -> list[str]:
    """Empty if every table holds exactly its rows up to ``step`` (per ``digests``
    where the checkpoint has them); else what is wrong, one phrase per table."""
    import pandas as pd

    out = []
    for name in [SCALARS, ACTIVATIONS, LAYERS] + ([ICS] if ics_every > 0 else []):
        path = run_dir / name
        if not path.exists():
            out.append(f"{name} is missing")
            continue
        try:
            df = pd.read_parquet(path, columns=COLUMNS[name])
        except Exception as e:
            out.append(f"{name} is unreadable ({type(e).__name__})")
            continue
        prefix = df[df["step"] <= step].reset_index(drop=True)
        if digests and name in digests:
            if table_digest(name, prefix) == digests[name]:
                continue
            found = sequence_problems(name, prefix, step, every, ics_every)
            out += found or [f"{name} differs from the rows checksummed at step {step}"]
        else:
            out += sequence_problems(name, prefix, step, every, ics_every)
    return out
