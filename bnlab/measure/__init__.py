"""What the probes measure, as pure jit-able functions: activation statistics and exact
percentiles of a probe batch, dead units, per-layer parameter statistics and effective
learning rates, gradient-ICS and the loss landscape, sharpness, histograms. No state,
no I/O: the engine calls them inside its programs."""

from bnlab.measure.activations import (
    activation_stats,
    dead_fraction,
    histogram,
    sample_positions,
)
from bnlab.measure.ics import gradient_ics, landscape
from bnlab.measure.layers import effective_lr, layer_stats, layer_weight, module_stats
from bnlab.measure.percentiles import order_statistics, percentiles, percentiles_through
from bnlab.measure.sharpness import hvp, top_eigenvalue

__all__ = [
    "activation_stats", "dead_fraction", "effective_lr", "gradient_ics", "histogram", "hvp",
    "landscape", "layer_stats", "layer_weight", "module_stats", "order_statistics",
    "percentiles", "percentiles_through", "sample_positions", "top_eigenvalue",
]  # fmt: skip
