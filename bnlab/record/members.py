"""A run directory and its members: where each member's record goes, with its config.

A single run's record is its directory. A vectorized sweep (``sweep.lr``,
``sweep.seeds``) writes one record per member into ``<run dir>/<i>/``, each with the
``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` of the single run with its
settings (``optimizer.lr``, ``seed``; ``sweep`` emptied), so
:func:`bnlab.analysis.runs.load_sweep` reads it exactly as a Hydra multirun and each member's
config re-runs it alone; the sweep's own config goes to ``.hydra-sweep/``.

The ``.hydra/`` files are written here, not by Hydra (``hydra.output_subdir: null``):
only once the run has passed its checks, so a refused command leaves the directory
as it was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.config import TrainConfig, to_yaml_dict

HIDDEN_HYDRA = ".hydra-sweep"  # a sweep's own config (the directory is not a run)


@dataclass(frozen=True)
class Member:
    index: int
    lr: float
    seed: int
    dir: Path


def members(cfg: TrainConfig, workdir: Path) -> list[Member]:
    """The members, learning rate major (member ``i`` = lr ``i // S``, seed ``i % S``)."""
    seeds = cfg.seeds
    out = []
    for i, lr in enumerate(cfg.lrs):
        for j, seed in enumerate(seeds):
            k = i * len(seeds) + j
            out.append(Member(k, lr, seed, workdir / str(k) if cfg.is_sweep else workdir))
    return out


def member_config(cfg: TrainConfig, m: Member) -> TrainConfig:
    """The single-run config of a member (``sweep`` emptied)."""
    c = copy.deepcopy(cfg)
    c.optimizer.lr, c.seed = m.lr, m.seed
    c.sweep.lr, c.sweep.seeds = [], 0
    return c


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def member_overrides(cfg: TrainConfig, overrides: list[str], m: Member) -> list[str]:
    """The overrides a multirun job with this member's settings would have."""
    if not cfg.is_sweep:
        return list(overrides)
    lr_swept, seed_swept = bool(cfg.sweep.lr), cfg.sweep.seeds > 0
    drop = ({"optimizer.lr"} if lr_swept else set()) | ({"seed"} if seed_swept else set())
    out = [o for o in overrides
           if not (_key(o) == "sweep" or _key(o).startswith("sweep.") or _key(o) in drop)]  # fmt: skip
    if lr_swept:
        out.append(f"optimizer.lr={m.lr!r}")
    if seed_swept:
        out.append(f"seed={m.seed}")
    return out


def write_hydra_files(
    cfg: TrainConfig, workdir: Path, ms: list[Member], overrides: list[str],
    hydra_cfg: Any = None,
) -> None:  # fmt: skip
    """The ``.hydra/`` files of the run (and of each member of a sweep)."""
    own = workdir / (HIDDEN_HYDRA if cfg.is_sweep else ".hydra")
    _write(own, to_yaml_dict(cfg), overrides, hydra_cfg)
    if cfg.is_sweep:
        for m in ms:
            c = to_yaml_dict(member_config(cfg, m))
            _write(m.dir / ".hydra", c, member_overrides(cfg, overrides, m), hydra_cfg)


def _write(d: Path, cfg: Any, overrides: list[str], hydra_cfg: Any) -> None:
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, d / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), d / "overrides.yaml")
    if hydra_cfg is not None:
        OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), d / "hydra.yaml")
