"""Models: the presets, and one functional interface for any Flax model.

- Presets (``model=mlp|cnn|vgg|resnet``): :class:`MLP` and :class:`CNN`
  (:mod:`.builtin`, sites sown as ``layer{i}/prenorm|pre|post``), :class:`VGG`
  (:mod:`.vgg`) and :class:`ResNet` (:mod:`.resnet`), all linen, NHWC, with a ``norm``
  argument.
- Any linen or NNX model by ``model._target_`` (:mod:`.build`), behind
  :class:`~bnlab.models.network.Network`'s ``init``/``apply`` (:mod:`.network`), its
  sites found by interception and Flax's BatchNorm replaced by bnlab's (:mod:`.sites`).
- Activations by name or ``_target_`` (:mod:`.activations`).
"""

from bnlab.models.activations import ACTIVATIONS, MONOTONE
from bnlab.models.build import (
    build_network,
    build_networks,
    check_input,
    check_model,
    make_nnx_norm,
    make_norm,
    select_sites,
)
from bnlab.models.builtin import (
    CNN,
    MLP,
    SITES,
    Block,
    activation_sources,
    flatten_sites,
    kernel_init,
    layer_names,
)
from bnlab.models.network import Layout, LinenNetwork, Network, NNXNetwork
from bnlab.models.resnet import ResNet
from bnlab.models.vgg import VGG

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "MONOTONE",
    "SITES",
    "VGG",
    "Block",
    "Layout",
    "LinenNetwork",
    "NNXNetwork",
    "Network",
    "ResNet",
    "activation_sources",
    "build_network",
    "build_networks",
    "check_input",
    "check_model",
    "flatten_sites",
    "kernel_init",
    "layer_names",
    "make_nnx_norm",
    "make_norm",
    "select_sites",
]
