"""From a checked config to a ready engine: the dataset, the model, the optimizer.

:func:`build_engine` is what every run, test and benchmark uses to turn a
:class:`~bnlab.config.TrainConfig` and a dataset into an :class:`~bnlab.engine.chunk.Engine`:
the networks (:mod:`bnlab.models`: the model by ``_target_``, bnlab's BN injected or
substituted, the sites found and chosen by ``probe.sites``), the optimizer
(:mod:`bnlab.engine.optim`), the learner (:mod:`bnlab.engine.step`) and the engine on the mesh of
:mod:`bnlab.engine.devices`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bnlab import config, data
from bnlab.config import TrainConfig
from bnlab.data.preprocess import auto_probe_size
from bnlab.engine import devices
from bnlab.engine.chunk import Engine
from bnlab.engine.diagnostics import Sharpness
from bnlab.engine.loss import check_loss, make_loss
from bnlab.engine.optim import make_optimizer
from bnlab.engine.step import Learner
from bnlab.errors import UserError, say
from bnlab.models import build_networks, check_input


def data_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.data`` as :func:`bnlab.data.load` takes it (choices as their names)."""
    return {k: str(v) if isinstance(v, config.Choice) else v for k, v in vars(cfg.data).items()}


def load_data(cfg: TrainConfig) -> data.Dataset:
    """The dataset of ``cfg.data``, announced in one line. With ``data.probe_size=auto``
    and ghost BN in batch mode on the probe, the probe batch keeps its first multiple
    of the ghost batch (BN's virtual batches must divide it)."""
    ds = data.load(**data_settings(cfg))
    n = cfg.norm
    if (
        cfg.data.probe_size == "auto"
        and n.normalizes
        and n.ghost_batch_size
        and (cfg.probe.bn_mode == "batch")
    ):
        keep = auto_probe_size(len(ds.probe_x), n.ghost_batch_size)
        ds = dataclasses.replace(ds, probe_x=ds.probe_x[:keep], probe_y=ds.probe_y[:keep])
    val = f" / {len(ds.val_y)} validation" if len(ds.val_y) else ""
    say(
        f"data {ds.name}: {len(ds.train_y)} train / {len(ds.test_y)} test{val}, "
        f"probe batch {len(ds.probe_x)}; from {ds.source}"
    )
    return ds


def build_engine(cfg: TrainConfig, ds: data.Dataset, data_dev: int, mem_dev: int,
                 probes: bool = True) -> Engine:  # fmt: skip
    """The engine of ``cfg`` on ``ds`` over ``data_dev`` x ``mem_dev`` devices. Raises
    :class:`~bnlab.errors.UserError` where the model does not fit the data or
    ``probe.sites`` matches no site."""
    mesh = devices.make_mesh(data_dev, mem_dev)
    check_input(cfg.model, ds.train_x.ndim)
    x = jax.ShapeDtypeStruct((cfg.batch_size // data_dev, *ds.train_x.shape[1:]),
                             ds.train_x.dtype)  # fmt: skip
    net, probe_net = build_networks(cfg, ds.num_classes, x, data_dev, devices.DATA)
    _check_units(cfg, net)
    host_loop = cfg.step_loop == "host" or (
        cfg.step_loop == "auto" and net.layout.convs and jax.default_backend() == "cpu"
    )
    tx, unit = make_optimizer(cfg.optimizer, cfg.steps)
    loss = make_loss(cfg.loss)
    check_loss(cfg.loss, loss, cfg.batch_size, ds.num_classes,
               (ds.train_y.shape[1:], ds.train_y.dtype))  # fmt: skip
    keys = ["train_x", "train_y", "test_x", "test_y", "probe_x"]
    keys += ["val_x", "val_y"] if len(ds.val_y) else []
    arrays = {k: getattr(ds, k) for k in keys}
    learner = Learner(
        net, probe_net, tx, unit, probe_cfg=cfg.probe, diverge_loss=cfg.diverge_loss,
        noisy=cfg.norm.noisy, shards=data_dev, unroll=host_loop, loss=loss,
        compute_dtype=jnp.bfloat16 if cfg.precision == "bf16" else None,
    )  # fmt: skip
    return Engine(
        learner, arrays, grid=(len(cfg.lrs), len(cfg.seeds)), batch_size=cfg.batch_size,
        every=cfg.probe.every, ics_every=cfg.probe.ics_every, ics_at=str(cfg.probe.ics_at),
        mesh=mesh, probe_device=devices.probe_device(cfg.probe.overlap, mesh), probes=probes,
        host_loop=host_loop, sharpness=Sharpness.of(cfg.probe),
    )  # fmt: skip


def _check_units(cfg: TrainConfig, net: Any) -> None:
    """``probe.units`` beyond every probed site's width would track nothing: refused
    (a unit beyond some sites' width is tracked where it exists)."""
    layout = net.layout
    widths = [layout.sites[s].shape[-1] for s in layout.selected if s in layout.sites]
    units = list(cfg.probe.units)
    if widths and units and max(units) >= max(widths):
        raise UserError(
            f"probe.units={units}: unit {max(units)} is beyond the widest probed site "
            f"({max(widths)} units or feature maps); use units below {max(widths)}"
        )
