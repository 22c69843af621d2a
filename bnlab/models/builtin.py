"""MLP and small CNN with a pluggable norm and named activation sites.

Every hidden layer is a submodule named ``layer{i}`` (i from 1) and sows its
activations into the ``sites`` collection, so ``apply(..., mutable=['sites'])``
returns them without changing the model. Site names, as in configs, logs and plots:

- ``layer{i}/prenorm``: the input of the norm (only where the norm normalizes);
- ``layer{i}/pre``: the input of the nonlinearity (after BN when BN comes first);
- ``layer{i}/post``: the layer's output, what the next layer sees.

The output layer is ``head`` (logits, no site).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from bnlab.config import ModelConfig, NormConfig
from bnlab.norm import BatchNorm, NoNorm

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}
# non-decreasing as XLA computes them in float32 (tests/test_probe.py checks); tanh is
# not: its approximation steps back by an ulp near +-1
MONOTONE = frozenset({"sigmoid", "relu", "linear"})
SITES = ("prenorm", "pre", "post")
NORM_POSITIONS = ("before", "after")


def kernel_init(init_std: float | None) -> Callable:
    """Gaussian N(0, init_std^2) weights, or LeCun normal when ``init_std`` is None."""
    return nn.initializers.lecun_normal() if init_std is None else nn.initializers.normal(init_std)


def _check(activation: str, norm_position: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")


class Block(nn.Module):
    """One hidden layer: a linear map (dense or conv), the norm and the nonlinearity."""

    linear: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    activation: str
    norm_position: str = "before"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = ACTIVATIONS[self.activation]
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
    activation: str = "sigmoid"
    norm: Callable[..., nn.Module] = NoNorm
    norm_position: str = "before"
    init_std: float | None = None
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
    activation: str = "relu"
    norm: Callable[..., nn.Module] = NoNorm
    norm_position: str = "before"
    init_std: float | None = None
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


def make_norm(
    cfg: NormConfig, axis_name: str | None = None, noise_axis: str | None = None
) -> Callable[..., nn.Module]:
    """The norm factory a model plugs into every hidden layer (``axis_name``: sync BN;
    ``noise_axis``: the axis a batch is split over, for noisy BN's global noise)."""
    if not cfg.normalizes:
        return NoNorm
    return partial(
        BatchNorm,
        use_scale=cfg.use_scale,
        use_bias=cfg.use_bias,
        stats_grad=cfg.stats_grad,
        momentum=cfg.momentum,
        epsilon=cfg.epsilon,
        ghost_batch_size=cfg.ghost_batch_size,
        axis_name=axis_name,
        center_only=cfg.center_only,
        noise_mean=cfg.noise_mean,
        noise_std=cfg.noise_std,
        noise_axis=noise_axis,
    )


def make_model(
    cfg: ModelConfig, norm: NormConfig, num_classes: int, axis_name: str | None = None,
    noise_axis: str | None = None,
) -> nn.Module:  # fmt: skip
    """The model of ``cfg`` with the norm of ``norm`` in every hidden layer."""
    common = dict(
        features=tuple(cfg.features),
        num_classes=num_classes,
        activation=str(cfg.activation),
        norm=make_norm(norm, axis_name, noise_axis),
        norm_position=str(cfg.norm_position),
        init_std=cfg.init_std,
        use_bias=cfg.use_bias,
    )
    if cfg.name == "cnn":
        return CNN(channels=tuple(cfg.channels), **common)
    return MLP(**common)


def flatten_sites(sites: dict) -> dict[str, jax.Array]:
    """``{'layer1': {'pre': (h,)}}`` from the ``sites`` collection -> ``{'layer1/pre': h}``."""
    return {
        "/".join(k): v[-1]
        for k, v in flatten_dict(sites, is_leaf=lambda _, v: isinstance(v, tuple)).items()
    }


def layer_names(params: dict) -> list[str]:
    """The hidden layers' names (``layer1``, ``layer2``, ...) in order."""
    names = [k for k in params if k.startswith("layer")]
    return sorted(names, key=lambda k: int(k[len("layer") :]))


def activation_sources(
    site_names: Iterable[str], activation: str, norm_position: str
) -> dict[str, str]:
    """``{site: source}`` for the sites that are their layer's activation applied
    elementwise to another of its sites, when the activation is in ``MONOTONE`` (the
    probe then reads their percentiles through the source's order statistics).

    ``before``: ``post = act(pre)``; ``after``: ``prenorm = act(pre)`` where a norm
    follows, else ``post = act(pre)``.
    """
    names = set(site_names)
    if activation not in MONOTONE:
        return {}
    out = {}
    for name in names:
        layer, site = name.rsplit("/", 1)
        if site != "pre":
            continue
        after_with_norm = norm_position == "after" and f"{layer}/prenorm" in names
        out[f"{layer}/prenorm" if after_with_norm else f"{layer}/post"] = name
    return {k: v for k, v in out.items() if k in names}
