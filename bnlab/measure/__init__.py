"""What the probes measure, as pure jit-able functions: activation statistics and exact
percentiles of a probe batch, per-layer parameter statistics, gradient-ICS and the loss
landscape, histograms. No state, no I/O: the engine calls them inside its programs."""

from bnlab.measure.activations import activation_stats, histogram, sample_positions
from bnlab.measure.ics import gradient_ics, landscape
from bnlab.measure.layers import layer_stats, layer_weight, module_stats
from bnlab.measure.percentiles import order_statistics, percentiles, percentiles_through

__all__ = [
    "activation_stats", "gradient_ics", "histogram", "landscape", "layer_stats",
    "layer_weight", "module_stats", "order_statistics", "percentiles",
    "percentiles_through", "sample_positions",
]  # fmt: skip
