"""Models written as Flax's own examples and tutorials write them (dropout, RNG
streams, custom layers on raw parameters, counters, partials and factories), for
tests/test_real_models.py. Written here from their descriptions, not copied; no bnlab.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

# --------------------------------------------------------------------------- NNX CNNs


class StoredRngsCNN(nnx.Module):
    """The NNX MNIST tutorial's shape, scaled to 8x8 digits: conv, BN, dropout, pool,
    twice; linear, dropout, linear. Its dropout layers keep their own ``rngs``."""

    def __init__(self, rate: float = 0.2, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(8, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=rate, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(16, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(64, 32, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=rate, rngs=rngs)
        self.linear2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x)))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        return self.linear2(self.dropout2(nnx.relu(self.linear1(x))))


class CallRngsCNN(nnx.Module):
    """The same CNN in the tutorial's other idiom: dropout layers without ``rngs``, the
    model's ``__call__`` takes ``rngs`` and passes them on."""

    def __init__(self, rate: float = 0.2, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(8, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=rate)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(16, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(64, 32, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=rate)
        self.linear2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        return self.linear2(self.dropout2(nnx.relu(self.linear1(x)), rngs=rngs))


# --------------------------------------------------------------------------- linen CNN


class LinenDropoutCNN(nn.Module):
    """A linen CNN in Flax's MNIST example's style with BN and dropout; ``train`` sets
    both."""

    rate: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.Dropout(self.rate, deterministic=not train)(x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.rate)(nn.relu(nn.Dense(32)(x)), deterministic=not train)
        return nn.Dense(10)(x)


# --------------------------------------------------------------------------- NNX toy MLP


class Count(nnx.Variable):
    """A counter variable of the user's own type."""


class Linear(nnx.Module):
    """A dense layer on raw parameters named ``w`` and ``b``."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.uniform(rngs.params(), (din, dout)) / din**0.5)
        self.b = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x):
        return x @ self.w + self.b


class CountMLP(nnx.Module):
    """Two custom ``Linear`` layers and a ``Count`` of the calls."""

    def __init__(self, din: int, width: int = 32, *, rngs: nnx.Rngs):
        self.count = Count(jnp.array(0, jnp.int32))
        self.linear1 = Linear(din, width, rngs=rngs)
        self.linear2 = Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        self.count[...] += 1
        x = x.reshape((x.shape[0], -1))
        return self.linear2(nnx.relu(self.linear1(x)))


# --------------------------------------------------------------------------- factories


class ResNetBlock(nn.Module):
    """conv-BN-relu-conv-BN plus a projected shortcut where the shape changes."""

    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        y = nn.relu(norm()(nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)))
        y = norm()(nn.Conv(self.filters, (3, 3), use_bias=False)(y))
        if x.shape != y.shape:
            x = norm()(nn.Conv(self.filters, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Stages of blocks, doubling the filters and halving the size from stage to stage."""

    stage_sizes: list[int]
    block_cls: type
    num_filters: int = 8
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.num_filters, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.num_filters * 2**i, strides)(x, train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


ResNetTiny = partial(ResNet, stage_sizes=[1, 1], block_cls=ResNetBlock)


def make_mlp(width: int = 16, num_classes: int = 10) -> nn.Module:
    """A factory function returning a linen MLP with BN."""
    return MLPWithBN(width=width, num_classes=num_classes)


class MLPWithBN(nn.Module):
    width: int
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(self.width)(x.reshape((x.shape[0], -1)))
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(self.num_classes)(x)


def make_count_mlp(din: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """A factory function returning an NNX module (it takes ``rngs``)."""
    return CountMLP(din, 16, rngs=rngs)


# --------------------------------------------------------------------------- losses, optimizers


def hinge(outputs, labels):
    """A multiclass hinge loss, one per example (Crammer-Singer)."""
    true = jnp.take_along_axis(outputs, labels[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, outputs.shape[1]) > 0, -jnp.inf, outputs)
    return jnp.maximum(0.0, 1.0 + others.max(axis=1) - true)


def mean_loss(outputs, labels):
    """A loss returning the batch mean instead of one loss per example (wrong)."""
    return hinge(outputs, labels).mean()


def clipped_adam(learning_rate, max_norm: float = 1.0):
    """Adam after clipping the gradient's global norm, as an optax chain."""
    import optax

    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(learning_rate))
