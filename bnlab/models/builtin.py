"""The built-in MLP and small CNN, with a pluggable norm and sown activation sites.

Every hidden layer is a submodule named ``layer{i}`` (i from 1) and sows its
activations into the ``sites`` collection, so ``apply(..., mutable=['sites'])``
returns them without changing the model. Site names, as in configs, logs and plots:

- ``layer{i}/prenorm``: the input of the norm (only where the norm normalizes);
- ``layer{i}/pre``: the input of the nonlinearity (after BN when BN comes first);
- ``layer{i}/post``: the layer's output, what the next layer sees.

The output layer is ``head`` (logits, no site). Other models need not sow: bnlab
finds their sites by interception (:mod:`bnlab.models.sites`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from bnlab.models.activations import is_monotone, resolve
from bnlab.norm import NoNorm

SITES = ("prenorm", "pre", "post")
NORM_POSITIONS = ("before", "after")


def flat_init(init: Callable) -> Callable:
    """``init`` (a variance-scaling initializer with flax's default axes, or a fixed-scale
    one) drawn as a (fan_in, out) matrix and reshaped: the same values as drawing the
    kernel's own shape (JAX's partitionable threefry draws by flat position, and the
    fans are the same), but XLA:CPU compiles a rank-4 draw ~10x slower."""

    def draw(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) <= 2:
            return init(key, shape, dtype)
        return init(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)

    return draw


def kernel_init(init_std: float | str | None) -> Callable:
    """Gaussian N(0, init_std^2) weights; ``"he"``: He normal (variance 2/fan-in, for ReLU
    nets); None: LeCun normal (variance 1/fan-in)."""
    if init_std is None:
        init = nn.initializers.lecun_normal()
    elif init_std == "he":
        init = nn.initializers.he_normal()
    else:
        init = nn.initializers.normal(init_std)
    return flat_init(init)


def _check(activation: str | Callable, norm_position: str) -> None:
    resolve(activation)  # ValueError naming the choices
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")


class Block(nn.Module):
    """One hidden layer: a linear map (dense or conv), the norm and the nonlinearity."""

    linear: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    activation: str | Callable
    norm_position: str = "before"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = resolve(self.activation)
        norm = self.norm(name="norm")
        h = self.linear(name="linear")(x)
        if self.norm_position == "before":
            if norm.normalizes:
                self.sow("sites", "prenorm", h)
            h = norm(h, use_running_average=not train)
            self.sow("sites", "pre", h)
            out = act(h)
        else:
            self.sow("sites", "pre", h)
            h = act(h)
            if norm.normalizes:
                self.sow("sites", "prenorm", h)
            out = norm(h, use_running_average=not train)
        self.sow("sites", "post", out)
        return out


def _dense_tail(net: MLP | CNN, x: jax.Array, train: bool, first: int) -> jax.Array:
    """Flatten, the dense hidden layers ``layer{first}``... and the ``head``: the end of
    both nets (call it inside their ``__call__``, so the layers are their submodules)."""
    init = kernel_init(net.init_std)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(net.features, first):
        dense = partial(nn.Dense, width, use_bias=net.use_bias, kernel_init=init)
        x = Block(dense, net.norm, net.activation, net.norm_position, name=f"layer{i}")(x, train)
    return nn.Dense(net.num_classes, kernel_init=init, name="head")(x)


class MLP(nn.Module):
    """Fully connected net; the default is Ioffe & Szegedy's Fig. 1 network."""

    features: Sequence[int] = (100, 100, 100)
    num_classes: int = 10
    activation: str | Callable = "sigmoid"
    norm: Callable[..., nn.Module] = NoNorm
    norm_position: str = "before"
    init_std: float | str | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        _check(self.activation, self.norm_position)
        return _dense_tail(self, x, train, first=1)


class CNN(nn.Module):
    """Small conv net for 28x28 / 32x32 (and 8x8) NHWC images.

    Each conv layer is a 3x3 conv, the norm (per feature map, over N, H, W), the
    nonlinearity and a 2x2 max-pool; then dense hidden layers and the head.
    """

    channels: Sequence[int] = (32, 64)
    features: Sequence[int] = (128,)
    num_classes: int = 10
    activation: str | Callable = "relu"
    norm: Callable[..., nn.Module] = NoNorm
    norm_position: str = "before"
    init_std: float | str | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        _check(self.activation, self.norm_position)
        if x.ndim != 4:
            raise ValueError(f"CNN needs NHWC images, got shape {x.shape}; set data.flatten=false")
        init = kernel_init(self.init_std)
        i = 0
        for i, ch in enumerate(self.channels, 1):
            conv = partial(
                nn.Conv, ch, (3, 3), padding="SAME", use_bias=self.use_bias, kernel_init=init
            )
            x = Block(conv, self.norm, self.activation, self.norm_position, name=f"layer{i}")(
                x, train
            )
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return _dense_tail(self, x, train, first=i + 1)


def flatten_sites(sites: dict) -> dict[str, jax.Array]:
    """``{'layer1': {'pre': (h,)}}`` from the ``sites`` collection -> ``{'layer1/pre': h}``."""
    return {
        "/".join(k): v[-1]
        for k, v in flatten_dict(sites, is_leaf=lambda _, v: isinstance(v, tuple)).items()
    }


def layer_names(params: dict) -> list[str]:
    """The hidden layers' names (``layer1``, ``layer2``, ...) in order."""
    names = [k for k in params if k.startswith("layer") and k[len("layer") :].isdigit()]
    return sorted(names, key=lambda k: int(k[len("layer") :]))


def activation_outputs(site_names: Iterable[str], norm_position: str) -> tuple[str, ...]:
    """The sites the activation produces, whatever it is: ``post`` (``before``), or
    ``prenorm`` where a norm follows it (``after``), else ``post``."""
    names = list(site_names)
    out = []
    for name in names:
        layer, site = name.rsplit("/", 1)
        if site == "pre":
            after_norm = norm_position == "after" and f"{layer}/prenorm" in names
            out.append(f"{layer}/prenorm" if after_norm else f"{layer}/post")
    return tuple(n for n in out if n in names)


def activation_sources(
    site_names: Iterable[str], activation: str | Callable, norm_position: str
) -> dict[str, str]:
    """``{site: source}`` for the sites that are their layer's activation applied
    elementwise to another of its sites, when the activation is in ``MONOTONE`` (the
    probe then reads their percentiles through the source's order statistics).

    ``before``: ``post = act(pre)``; ``after``: ``prenorm = act(pre)`` where a norm
    follows, else ``post = act(pre)``.
    """
    names = set(site_names)
    if not is_monotone(activation):
        return {}
    out = {}
    for name in names:
        layer, site = name.rsplit("/", 1)
        if site != "pre":
            continue
        after_with_norm = norm_position == "after" and f"{layer}/prenorm" in names
        out[f"{layer}/prenorm" if after_with_norm else f"{layer}/post"] = name
    return {k: v for k, v in out.items() if k in names}
