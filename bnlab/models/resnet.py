"""The CIFAR ResNet family of He et al. 2016 (Sec. 4.2): ResNet-20 by default, depth a
knob (ResNet-110 in Bjorck et al. 2018).

NHWC images. A 3x3 conv of ``width`` filters (``conv0``) with its norm (``norm0``) and
nonlinearity; three stages (``stage1..3``) of n basic blocks (``block1..n``) with
``width``, 2x and 4x filters, the first block of stages 2 and 3 striding by 2; global
average pooling and a dense ``head``. depth = 6n + 2. A basic block is conv1 (3x3) ->
norm1 -> nonlinearity -> conv2 (3x3) -> norm2, plus the shortcut, then the
nonlinearity. Where the shape changes the shortcut is, by ``shortcut``: ``pad``
(option A of the paper, used there on CIFAR: take every second position and pad the
new channels with zeros, no parameters) or ``projection`` (option B: a strided 1x1
conv ``proj`` with its norm ``proj_norm``). Convolutions have no bias (the norm's beta
takes its place; with ``norm=none`` set ``model.use_bias=true`` to give them one) and
He-normal weights.

No site is sown: bnlab finds them by interception, named by module path
(``stage2/block1/norm1/in``, ``stage2/block1/norm1/out``, ``stage2/block1/conv2/in``...).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnlab.models.activations import resolve
from bnlab.models.builtin import flat_init
from bnlab.norm import NoNorm

SHORTCUTS = ("pad", "projection")
# He-normal (truncated normal, variance 2 / fan_in), drawn flat (see flat_init)
he_normal = flat_init(nn.initializers.variance_scaling(2.0, "fan_in", "normal"))


def blocks_per_stage(depth: int) -> int:
    """n of a depth-(6n + 2) CIFAR ResNet; ``ValueError`` for any other depth."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth={depth} is not 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...)")
    return (depth - 2) // 6


class BasicBlock(nn.Module):
    filters: int
    stride: int
    norm: Callable[..., nn.Module]
    activation: str | Callable
    shortcut: str
    use_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = resolve(self.activation)
        conv = lambda k, s, name: nn.Conv(  # noqa: E731
            self.filters, (k, k), (s, s), padding="SAME", use_bias=self.use_bias,
            kernel_init=he_normal, name=name,
        )  # fmt: skip
        y = conv(3, self.stride, "conv1")(x)
        y = act(self.norm(name="norm1")(y, use_running_average=not train))
        y = conv(3, 1, "conv2")(y)
        y = self.norm(name="norm2")(y, use_running_average=not train)
        if self.stride != 1 or x.shape[-1] != self.filters:
            if self.shortcut == "projection":
                x = conv(1, self.stride, "proj")(x)
                x = self.norm(name="proj_norm")(x, use_running_average=not train)
            else:  # option A: subsample, zero-pad the new channels
                x = x[:, :: self.stride, :: self.stride, :]
                extra = self.filters - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return act(y + x)


class Stage(nn.Module):
    filters: int
    stride: int
    blocks: int
    norm: Callable[..., nn.Module]
    activation: str | Callable
    shortcut: str
    use_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for b in range(self.blocks):
            x = BasicBlock(self.filters, self.stride if b == 0 else 1, self.norm,
                           self.activation, self.shortcut, self.use_bias,
                           name=f"block{b + 1}")(x, train)  # fmt: skip
        return x


class ResNet(nn.Module):
    """CIFAR ResNet of ``depth`` = 6n + 2 layers (20: n = 3; 110: n = 18)."""

    depth: int = 20
    width: int = 16
    shortcut: str = "pad"
    num_classes: int = 10
    activation: str | Callable = "relu"
    norm: Callable[..., nn.Module] = NoNorm
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(
                f"ResNet needs NHWC images, got shape {x.shape}; set data.flatten=false"
            )
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        n = blocks_per_stage(self.depth)
        act = resolve(self.activation)
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=self.use_bias,
                    kernel_init=he_normal, name="conv0")(x)  # fmt: skip
        x = act(self.norm(name="norm0")(x, use_running_average=not train))
        for s in range(3):
            x = Stage(self.width * 2**s, 1 if s == 0 else 2, n, self.norm, self.activation,
                      self.shortcut, self.use_bias, name=f"stage{s + 1}")(x, train)  # fmt: skip
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
