"""Models written as a user would, for the tests that train them through
``model._target_`` (``import_path=[tests]``, or this folder on ``sys.path``)."""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx


class FlaxBNMLP(nn.Module):
    """A linen MLP that hard-codes ``flax.linen.BatchNorm`` (bnlab substitutes it)."""

    width: int = 16
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.width)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dense(self.width)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(self.num_classes)(nn.relu(x))


class NNXFlaxBN(nnx.Module):
    """An NNX net that hard-codes ``flax.nnx.BatchNorm``, in an ``nnx.List``; no ``train``
    argument (bnlab sets the BN's mode)."""

    def __init__(self, din: int, width: int = 16, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(din, width, rngs=rngs), nnx.BatchNorm(width, rngs=rngs)])
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for layer in self.layers:
            x = layer(x)
        return self.head(nnx.relu(x))


class NNXLayer(nnx.Module):
    """bnlab's MLP layer in NNX: linear, norm, sigmoid, the built-in's sown site names."""

    def __init__(self, din: int, dout: int, norm, init_std: float, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(init_std)
        self.linear = nnx.Linear(din, dout, kernel_init=init, rngs=rngs)
        self.norm = norm(dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.linear(x)
        if self.norm.normalizes:
            self.sow(nnx.Intermediate, "prenorm", h)
        h = self.norm(h)
        self.sow(nnx.Intermediate, "pre", h)
        out = nnx.sigmoid(h)
        self.sow(nnx.Intermediate, "post", out)
        return out


class NNXMLP(nnx.Module):
    """The built-in MLP (``model=mlp``: layer{i}/linear, layer{i}/norm, head) in NNX;
    its parameters have the linen MLP's layout, so one can start from the other's."""

    def __init__(self, din: int, features: tuple[int, ...], norm, num_classes: int = 10,
                 init_std: float = 0.1, *, rngs: nnx.Rngs):  # fmt: skip
        widths = [din, *features]
        for i in range(len(features)):
            setattr(self, f"layer{i + 1}", NNXLayer(widths[i], widths[i + 1], norm, init_std,
                                                    rngs=rngs))  # fmt: skip
        self.depth = len(features)
        self.head = nnx.Linear(widths[-1], num_classes,
                               kernel_init=nnx.initializers.normal(init_std), rngs=rngs)  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.head(x)


class TupleOut(nn.Module):
    """Returns (logits, an auxiliary value): not what bnlab trains on."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(10)(x.reshape(len(x), -1))
        return x, x.mean()


class SevenOut(nn.Module):
    """Seven outputs for ten classes."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        return nn.Dense(7)(x.reshape(len(x), -1))


class NoBN(nn.Module):
    """No normalization layer at all."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        return nn.Dense(10)(nn.relu(nn.Dense(16)(x.reshape(len(x), -1))))
