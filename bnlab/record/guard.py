"""What a run directory must satisfy before a run writes into it.

- **One writer**: an advisory lock (``.lock``, holding the writer's PID); a second
  process on the same directory stops at once. The kernel releases the lock when its
  holder dies, so a stale lock from a killed run is simply taken over.
- **A record knows its config**: a run directory carries the config it was made with
  (``.hydra/config.yaml``, a sweep's in ``.hydra-sweep/``). Continuing it with a config
  that would change its results is refused, naming the keys, before anything in the
  directory is touched. What may differ is listed once, in :data:`FREE`.
- **Tables match the checkpoint**: before a resume from the checkpoint at step s,
  every table must be readable and hold its rows up to s; otherwise the run stops with
  one line offering ``resume.rebuild=true`` (truncate every table to the last step all
  of them cover, and continue from the checkpoint at or before it).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.config import TrainConfig, to_yaml_dict
from bnlab.errors import UserError, say
from bnlab.record.tables import ACTIVATIONS, COLUMNS, ICS, LAYERS, SCALARS

LOCK = ".lock"
# settings that do not change a run's results: a run may continue with other values
FREE = (
    "progress", "figure", "resume", "compile_cache", "chunk_steps", "checkpoint_every",
    "data.dir", "data.data_dir", "data.download", "parallel", "probe.overlap", "step_loop",
    "import_path",
)  # fmt: skip


class RunLock:
    """An exclusive advisory lock on a run directory, held while the run writes."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self._f = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:
            raise UserError(write_problem(self.path.parent, e)) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(
                f"{self.path.parent} is being written by process {holder}: wait for it to "
                "end, or use another hydra.run.dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._f is not None:
            self._f.close()  # closing releases the lock
            self._f = None


def write_problem(where: Path, e: OSError) -> str:
    """A one-line message for a failed write into a run directory."""
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EFBIG: "a file grew past the size limit",
    }.get(e.errno, e.strerror or type(e).__name__)
    return f"cannot write the run record in {where} ({what}): free space or fix permissions"


def saved_config_path(cfg: TrainConfig, workdir: Path) -> Path:
    from bnlab.record.members import HIDDEN_HYDRA

    return workdir / (HIDDEN_HYDRA if cfg.is_sweep else ".hydra") / "config.yaml"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: tree}


def _free(key: str, cfg: TrainConfig) -> bool:
    if key == "steps":  # more steps continue the same run, unless the schedule spans them
        return cfg.optimizer.schedule != "cosine"
    return any(key == f or key.startswith(f + ".") for f in FREE)


def check_saved_config(cfg: TrainConfig, workdir: Path) -> None:
    """Refuse to continue a record made with a config that changes results."""
    path = saved_config_path(cfg, workdir)
    other = workdir / (".hydra" if cfg.is_sweep else ".hydra-sweep") / "config.yaml"
    if not path.exists():
        if other.exists():
            kind = "a vectorized sweep" if cfg.is_sweep else "a single run"
            raise UserError(
                f"{workdir} holds a record of another kind than {kind}: use another "
                "hydra.run.dir, or resume it with python -m bnlab.train resume=" + str(workdir)
            )
        return
    try:
        saved = OmegaConf.to_container(
            OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
        )
    except Exception as e:
        raise UserError(
            f"{path} cannot be read as a bnlab config ({type(e).__name__}): use another "
            "hydra.run.dir"
        ) from None
    now = OmegaConf.to_container(to_yaml_dict(cfg))
    a, b = _flat(saved), _flat(now)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not _free(k, cfg)]
    if diff:
        shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise UserError(
            f"{workdir} was made with another config ({shown}{more}): continue it as it was "
            f"with python -m bnlab.train resume={workdir}, or use another hydra.run.dir"
        )


def remove_orbax_temp(ckpt_dir: Path) -> None:
    """Orbax's temporary directories of a save that never finished (a kill, a full disk)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if "orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- tables


def table_coverage(run_dir: Path, needs_ics: bool) -> dict[str, int | str]:
    """Per required table, the last step it holds rows for, or a problem (text)."""
    out: dict[str, int | str] = {}
    names = [SCALARS, ACTIVATIONS, LAYERS] + ([ICS] if needs_ics else [])
    for name in names:
        path = run_dir / name
        if not path.exists():
            out[name] = "missing"
            continue
        try:
            import pandas as pd

            df = pd.read_parquet(path, columns=COLUMNS[name])
        except Exception as e:
            out[name] = f"unreadable ({type(e).__name__})"
            continue
        out[name] = int(df["step"].max()) if len(df) else -1
    return out


def verify_tables(run_dir: Path, step: int, ics_every: int) -> int | None:
    """None if every table holds its rows up to ``step``; else says what is wrong and
    returns the last step up to which all of them are complete (-1: none is)."""
    cov = table_coverage(run_dir, ics_every > 0)
    complete: dict[str, int] = {}
    for name, c in cov.items():
        last = -1 if isinstance(c, str) else c
        # the ics table has rows every ics_every steps: complete until just before the next
        complete[name] = last + ics_every - 1 if name == ICS else last
    bad = {n: c for n, c in cov.items() if complete[n] < step}
    if not bad:
        return None
    text = ", ".join(
        f"{n} {c}" if isinstance(c, str) else f"{n} ends at step {c}" for n, c in bad.items()
    )
    say(f"{run_dir}: {text}, but its checkpoint is at step {step}")
    return min(complete.values())
