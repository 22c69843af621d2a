"""From a checked config to a ready engine: the dataset, the model, the optimizer.

:func:`build_engine` is what every run, test and benchmark uses to turn a
:class:`~bnlab.config.TrainConfig` and a dataset into an :class:`~bnlab.engine.Engine`.
"""

from __future__ import annotations

from typing import Any

from bnlab import config, data, devices
from bnlab.config import TrainConfig
from bnlab.engine import Engine
from bnlab.errors import say
from bnlab.models import make_model
from bnlab.optim import make_optimizer
from bnlab.step import Learner


def data_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.data`` as :func:`bnlab.data.load` takes it (choices as their names)."""
    return {k: str(v) if isinstance(v, config.Choice) else v for k, v in vars(cfg.data).items()}


def load_data(cfg: TrainConfig) -> data.Dataset:
    """The dataset of ``cfg.data``, announced in one line."""
    ds = data.load(**data_settings(cfg))
    val = f" / {len(ds.val_y)} validation" if len(ds.val_y) else ""
    say(
        f"data {ds.name}: {len(ds.train_y)} train / {len(ds.test_y)} test{val}, "
        f"probe batch {len(ds.probe_x)}; from {ds.source}"
    )
    return ds


def build_engine(cfg: TrainConfig, ds: data.Dataset, data_dev: int, mem_dev: int,
                 probes: bool = True) -> Engine:  # fmt: skip
    """The engine of ``cfg`` on ``ds`` over ``data_dev`` x ``mem_dev`` devices."""
    mesh = devices.make_mesh(data_dev, mem_dev)
    sync = data_dev > 1 and cfg.norm.sync and cfg.norm.ghost_batch_size is None
    split = devices.DATA if data_dev > 1 else None
    model = make_model(cfg.model, cfg.norm, ds.num_classes, split if sync else None, split)
    probe_model = make_model(cfg.model, cfg.norm, ds.num_classes) if split else model
    tx, unit = make_optimizer(cfg.optimizer, cfg.steps)
    keys = ["train_x", "train_y", "test_x", "test_y", "probe_x"]
    keys += ["val_x", "val_y"] if len(ds.val_y) else []
    arrays = {k: getattr(ds, k) for k in keys}
    learner = Learner(
        model, probe_model, tx, unit, probe_cfg=cfg.probe, diverge_loss=cfg.diverge_loss,
        noisy=cfg.norm.noisy, shards=data_dev,
    )  # fmt: skip
    return Engine(
        learner, arrays, grid=(len(cfg.lrs), len(cfg.seeds)), batch_size=cfg.batch_size,
        every=cfg.probe.every, ics_every=cfg.probe.ics_every, ics_at=str(cfg.probe.ics_at),
        mesh=mesh, probe_device=devices.probe_device(cfg.probe.overlap, mesh), probes=probes,
    )  # fmt: skip
