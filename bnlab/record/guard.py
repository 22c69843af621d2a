"""What a run directory must satisfy before a run writes into it.

- **One writer**: an advisory lock (``.lock``, holding the writer's PID); a second
  process on the same directory stops at once. The kernel releases the lock when its
  holder dies, so a stale lock from a killed run is simply taken over.
- **A record knows its config**: a run directory carries the config it was made with
  (``.hydra/config.yaml``, a sweep's in ``.hydra-sweep/``). Continuing it with a config
  that would change its results is refused, naming the keys, before anything in the
  directory is touched. What may differ is listed once, in :data:`FREE`.
- **A record without its config is refused**: it cannot be checked against the
  command, so it is neither continued nor overwritten (but by ``resume.enabled=false``,
  which first moves it aside).
- **Starting over orphans nothing**: ``resume.enabled=false`` moves the record already
  in the directory into ``.replaced/`` before anything new is written.
- **No going back**: a record further along than ``steps`` is refused.

Whether the tables match the checkpoint is checked where the run resumes
(:mod:`bnlab.run.restore`, :mod:`bnlab.record.integrity`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.config import TrainConfig, dotted, to_yaml_dict
from bnlab.errors import UserError, say
from bnlab.record.checkpoint import REPLACED, Checkpoints
from bnlab.record.tables import CHECKPOINTS, COLUMNS, SUMMARY

LOCK = ".lock"
# settings that do not change a run's results: a run may continue with other values
FREE = (
    "progress", "figure", "resume", "compile_cache", "chunk_steps", "checkpoint_every",
    "data.dir", "data.data_dir", "data.download", "probe.overlap", "import_path", "objective",
)  # fmt: skip
# (tests/test_records.py resumes with each of them changed and compares at rtol 0;
# parallel.* and step_loop change the float32 rounding, so they must stay as they were)


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
                f"hydra.run.dir, or resume it with {resume_command(workdir)}"
            )
        if holds_record(workdir):
            raise UserError(
                f"{workdir} holds a record without its config ({path.relative_to(workdir)}): "
                "it cannot be checked against this command; use another hydra.run.dir, or "
                "resume.enabled=false to move it aside and start over"
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
    a, b = dotted(saved), dotted(now)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not _free(k, cfg)]
    if diff:
        shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise UserError(
            f"{workdir} was made with another config ({shown}{more}): continue it as it was "
            f"with {resume_command(workdir)}, or use another hydra.run.dir"
        )


def remove_orbax_temp(ckpt_dir: Path) -> None:
    """Orbax's temporary directories of a save that never finished (a kill, a full disk)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if "orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def resume_command(workdir: str | Path) -> str:
    """The command that continues ``workdir``, quoted for a POSIX shell."""
    import shlex

    return f"python -m bnlab.train {shlex.quote(f'resume={workdir}')}"


def _record_entries(workdir: Path) -> list[Path]:
    """What in ``workdir`` belongs to a record (not the lock, logs or what was set aside)."""
    if not workdir.is_dir():
        return []
    keep = {LOCK, REPLACED}
    return [p for p in workdir.iterdir() if p.name not in keep and p.suffix != ".log"]


def holds_record(workdir: Path) -> bool:
    """Whether ``workdir`` holds record files (a summary, a table, checkpoints), its
    own or a sweep member's."""
    names = {SUMMARY, CHECKPOINTS, *COLUMNS}
    for d in [workdir, *(p for p in _record_entries(workdir) if p.is_dir() and p.name.isdigit())]:
        if d.is_dir() and any((d / n).exists() for n in names):
            return True
    return False


def set_aside_record(workdir: Path) -> Path | None:
    """``resume.enabled=false`` over a record: move it into ``.replaced/`` (its config
    last, so a kill meanwhile leaves no config beside tables it did not make)."""
    entries = _record_entries(workdir)
    if not entries:
        return None
    home = set_aside_dest(workdir)
    home.mkdir(parents=True)
    for p in sorted(entries, key=lambda p: p.name.startswith(".hydra")):
        os.replace(p, home / p.name)
    say(f"resume.enabled=false: the record already in {workdir} was moved to {home}")
    return home


def set_aside_dest(workdir: Path) -> Path:
    k = 1
    while (workdir / REPLACED / f"record-{k}").exists():
        k += 1
    return workdir / REPLACED / f"record-{k}"


def check_steps(cfg: TrainConfig, dirs: list[Path]) -> None:
    """Refuse ``steps`` below the newest checkpoint of an unfinished record."""
    for d in dirs:
        done = max(Checkpoints(d / CHECKPOINTS).steps(), default=0)
        if done > cfg.steps:
            raise UserError(
                f"{d} has a checkpoint at step {done}, beyond steps={cfg.steps}: ask for "
                f"steps={done} or more to continue it, or use another hydra.run.dir"
            )
