"""The optimizer, with its learning rate as data in its state.

``optax.inject_hyperparams`` keeps the peak learning rate in the optimizer state
(``opt_state.hyperparams['learning_rate']``), so the members of a sweep differ only
by a number in their state and share one compiled step. The schedule is a unit
multiplier of that rate: the learning rate at step t is ``lr * unit(t)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bnlab.config import OptimizerConfig

LR = "learning_rate"  # the hyperparameter's key in the optimizer state


def unit_schedule(cfg: OptimizerConfig, steps: int) -> optax.Schedule:
    """The schedule of a peak learning rate of 1 (warmup, then constant/cosine/step)."""
    if cfg.schedule == "constant":
        sched = optax.constant_schedule(1.0)
    elif cfg.schedule == "cosine":
        sched = optax.cosine_decay_schedule(1.0, max(steps - cfg.warmup_steps, 1))
    else:  # step
        sched = optax.piecewise_constant_schedule(
            1.0, {int(b) - cfg.warmup_steps: cfg.decay_factor for b in cfg.boundaries}
        )
    if cfg.warmup_steps:
        warm = optax.linear_schedule(0.0, 1.0, cfg.warmup_steps)
        sched = optax.join_schedules([warm, sched], [cfg.warmup_steps])
    return sched


def make_optimizer(cfg: OptimizerConfig, steps: int) -> tuple[optax.GradientTransformation, Any]:
    """The optimizer (its peak lr in its state, ``cfg.lr`` at init) and its unit schedule."""
    unit = unit_schedule(cfg, steps)
    momentum = cfg.momentum if cfg.name != "adam" else 0.0

    def factory(learning_rate):
        rate = lambda count: learning_rate * unit(count)  # noqa: E731
        if cfg.name == "adam":
            tx = optax.adam(rate, b1=cfg.b1, b2=cfg.b2)
        else:
            tx = optax.sgd(rate, momentum=momentum or None, nesterov=cfg.nesterov)
        if cfg.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
        return tx

    return optax.inject_hyperparams(factory)(learning_rate=cfg.lr), unit


def with_lr(opt_state: Any, lr: jax.Array | float) -> Any:
    """``opt_state`` with its peak learning rate set to ``lr``."""
    hp = dict(opt_state.hyperparams)
    hp[LR] = jnp.asarray(lr, hp[LR].dtype)
    return opt_state._replace(hyperparams=hp)


def peak_lr(opt_state: Any) -> jax.Array:
    return opt_state.hyperparams[LR]
