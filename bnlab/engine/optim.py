"""The optimizer, with its learning rate as data in its state.

``optax.inject_hyperparams`` keeps the peak learning rate in the optimizer state
(``opt_state.hyperparams['learning_rate']``), so the members of a sweep differ only
by a number in their state and share one compiled step. The schedule is a unit
multiplier of that rate: the learning rate at step t is ``lr * unit(t)``.

``optimizer=optax`` takes any optax factory by ``optimizer._target_`` (``optax.adamw``,
``optax.lamb``, a user function returning an ``optax.chain``), called as
``factory(learning_rate=schedule, **optimizer.args)``; the rate is injected the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bnlab.config import OptimizerConfig
from bnlab.errors import UserError

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


def optax_factory(cfg: OptimizerConfig) -> Any:
    """The function ``optimizer._target_`` names, checked by building it once with a
    constant rate: one-line errors where it cannot be located, called or does not return
    an optax transformation."""
    from bnlab.models.activations import locate

    t = cfg._target_
    try:
        fn = locate(str(t))
    except ImportError as e:
        raise UserError(f"optimizer._target_={t}: {e} (is its folder in import_path?)") from None
    try:
        tx = fn(learning_rate=0.1, **dict(cfg.args))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(
            f"optimizer._target_={t} fails when called as {t}(learning_rate=..., "
            f"**optimizer.args): {type(e).__name__}: {first}"
        ) from None
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise UserError(
            f"optimizer._target_={t} returned a {type(tx).__name__}, not an optax "
            "GradientTransformation: name an optax optimizer factory such as optax.adamw"
        )
    return fn


def make_optimizer(cfg: OptimizerConfig, steps: int) -> tuple[optax.GradientTransformation, Any]:
    """The optimizer (its peak lr in its state, ``cfg.lr`` at init) and its unit schedule."""
    unit = unit_schedule(cfg, steps)
    momentum = cfg.momentum if cfg.name not in ("adam", "optax") else 0.0
    own = optax_factory(cfg) if cfg.name == "optax" else None

    def factory(learning_rate):
        rate = lambda count: learning_rate * unit(count)  # noqa: E731
        if own is not None:
            tx = own(learning_rate=rate, **dict(cfg.args))
        elif cfg.name == "adam":
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
