"""A VGG-style convnet (Simonyan & Zisserman 2015), the family Santurkar et al. 2018
trained on CIFAR-10 with and without BN.

NHWC images. Stage s is ``len(stages[s])`` 3x3 convolutions (``stage{s}/conv{c}``),
each followed by the norm (``stage{s}/norm{c}``, per feature map over N, H, W) and the
nonlinearity, then a 2x2 max-pool; after the last stage the map is flattened (1x1 at
32x32 and 28x28 with five stages), optional dense hidden layers ``dense{i}`` (each
followed by the norm ``dense{i}_norm`` and the nonlinearity), and the ``head``. The
default stages are VGG-11's (configuration A: 64, 128, 2x256, 2x512, 2x512), as in
the CIFAR VGGs of common PyTorch code, whose classifier is one linear layer.

No site is sown: bnlab finds them by interception, named by module path
(``stage2/norm1/in``, ``stage2/norm1/out``, ``stage3/conv1/in``...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from bnlab.models.activations import resolve
from bnlab.models.resnet import he_normal
from bnlab.norm import NoNorm


class VGGStage(nn.Module):
    """Convolutions of one width, each with the norm and the nonlinearity; a 2x2 max-pool."""

    channels: Sequence[int]
    norm: Callable[..., nn.Module]
    activation: str | Callable
    use_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = resolve(self.activation)
        for c, ch in enumerate(self.channels, 1):
            x = nn.Conv(ch, (3, 3), padding="SAME", use_bias=self.use_bias,
                        kernel_init=he_normal, name=f"conv{c}")(x)  # fmt: skip
            x = act(self.norm(name=f"norm{c}")(x, use_running_average=not train))
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class VGG(nn.Module):
    """VGG-style convnet; ``stages`` are the conv widths per stage (default VGG-11)."""

    stages: Sequence[Sequence[int]] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
    features: Sequence[int] = ()
    num_classes: int = 10
    activation: str | Callable = "relu"
    norm: Callable[..., nn.Module] = NoNorm
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"VGG needs NHWC images, got shape {x.shape}; set data.flatten=false")
        act = resolve(self.activation)
        for s, chans in enumerate(self.stages, 1):
            x = VGGStage(tuple(chans), self.norm, self.activation, self.use_bias,
                         name=f"stage{s}")(x, train)  # fmt: skip
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features, 1):
            x = nn.Dense(width, use_bias=self.use_bias, name=f"dense{i}")(x)
            x = act(self.norm(name=f"dense{i}_norm")(x, use_running_average=not train))
        return nn.Dense(self.num_classes, name="head")(x)
