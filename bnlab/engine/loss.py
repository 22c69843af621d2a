"""The loss of a step, from the ``loss`` config: one loss per example.

``make_loss(cfg)`` returns ``fn(outputs, labels) -> (batch,)`` losses in float32 for
outputs ``(batch, classes)`` and integer labels ``(batch,)``: softmax cross-entropy
(``loss.label_smoothing`` > 0: against ``optax.smooth_labels`` of the one-hot labels),
sigmoid binary cross-entropy and squared error against the (smoothed) one-hot vector,
averaged over the classes, or the user's function (``loss=own loss._target_=...``),
checked once on abstract arrays of the run's shapes. Float targets (a regression task,
``(batch,)`` or ``(batch, K)``) are compared to the outputs directly by
``mean_squared_error`` (or the user's loss); the class losses need integer labels.
Accuracy is argmax against integer labels, and none where the targets are floats.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from bnlab.config import LossConfig
from bnlab.errors import UserError

Array = jax.Array
Loss = Callable[[Array, Array], Array]


def _targets(outputs: Array, labels: Array, smoothing: float) -> Array:
    one_hot = jax.nn.one_hot(labels, outputs.shape[-1], dtype=jnp.float32)
    return optax.smooth_labels(one_hot, smoothing) if smoothing else one_hot


def make_loss(cfg: LossConfig) -> Loss:
    """The per-example loss of ``cfg`` (the user's is not checked here: :func:`check_loss`)."""
    s = float(cfg.label_smoothing)
    if cfg.name == "own":
        from bnlab.models.activations import locate

        try:
            return locate(str(cfg._target_))
        except ImportError as e:
            raise UserError(
                f"loss._target_={cfg._target_}: {e} (is its folder in import_path?)"
            ) from None
    if cfg.name == "softmax_cross_entropy" and not s:
        return lambda o, y: optax.softmax_cross_entropy_with_integer_labels(
            o.astype(jnp.float32), y
        )
    if cfg.name == "softmax_cross_entropy":
        return lambda o, y: optax.softmax_cross_entropy(o.astype(jnp.float32), _targets(o, y, s))
    if cfg.name == "sigmoid_binary_cross_entropy":
        return lambda o, y: optax.sigmoid_binary_cross_entropy(
            o.astype(jnp.float32), _targets(o, y, s)).mean(-1)  # fmt: skip
    return lambda o, y: jnp.mean((o.astype(jnp.float32) - _regress(o, y, s)) ** 2, axis=-1)


def _regress(outputs: Array, y: Array, smoothing: float) -> Array:
    """Float targets as they are (``(batch,)`` as one column); integer labels one-hot."""
    if jnp.issubdtype(y.dtype, jnp.floating):
        return y.astype(jnp.float32).reshape(outputs.shape)
    return _targets(outputs, y, smoothing)


def has_classes(y: Array) -> bool:
    """Whether labels ``y`` are class indices (accuracy applies), not float targets."""
    return not jnp.issubdtype(y.dtype, jnp.floating)


def check_loss(cfg: LossConfig, fn: Loss, batch: int, classes: int,
               targets: tuple[tuple[int, ...], object] = ((), jnp.int32)) -> None:  # fmt: skip
    """Float ``targets`` (one example's shape and the dtype) take only
    ``mean_squared_error`` or a user loss; a user loss must take ``(outputs, labels)``
    and return one loss per example."""
    shape, dtype = targets
    if jnp.issubdtype(dtype, jnp.floating) and cfg.name not in ("mean_squared_error", "own"):
        raise UserError(
            f"loss={cfg.name} needs integer class labels but the data's targets are floats "
            "(regression): use loss=mean_squared_error or loss=own"
        )
    if cfg.name != "own":
        return
    o = jax.ShapeDtypeStruct((batch, classes), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, *shape), dtype)
    try:
        out = jax.eval_shape(fn, o, y)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(
            f"loss._target_={cfg._target_} fails on (outputs {o.shape}, labels {y.shape}): "
            f"{type(e).__name__}: {first}"
        ) from None
    if getattr(out, "shape", None) != (batch,):
        raise UserError(
            f"loss._target_={cfg._target_} returns {getattr(out, 'shape', type(out).__name__)}"
            f" for a batch of {batch}: it must return one loss per example, shape ({batch},)"
        )
