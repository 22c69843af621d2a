"""NNX models' hard-coded ``flax.nnx.BatchNorm`` layers replaced by bnlab's normalizer.

A linen model's BN is intercepted at each call (:mod:`bnlab.models.sites`); an NNX
model's modules are objects, so they are swapped once, when the model is built, their
settings and state kept.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from bnlab.models.sites import Norm
from bnlab.norm import NNXBatchNorm, NNXNoNorm, variants_nnx


def substitute_nnx(model: nnx.Module, norm: Norm) -> int:
    """Replace every ``flax.nnx.BatchNorm`` in ``model`` by bnlab's (its settings and
    state kept, ``norm``'s switches taken), or by NoNorm under ``norm=none``; returns
    how many were replaced."""
    found = [(p, m) for p, m in nnx.iter_modules(model) if type(m) is nnx.BatchNorm]
    parents = dict(nnx.iter_modules(model))
    done: dict[int, Any] = {}
    for path, m in found:
        new = done.get(id(m))
        if new is None:
            new = done[id(m)] = _nnx_replacement(m, norm)
        parent, key = parents[path[:-1]], path[-1]
        if isinstance(key, int) or hasattr(parent, "__setitem__"):
            parent[key] = new
        else:
            setattr(parent, key, new)
    return len(found)


def _nnx_replacement(m: nnx.BatchNorm, norm: Norm) -> nnx.Module:
    if not norm.normalizes:
        return NNXNoNorm()
    if norm.kind != "batch":
        return _nnx_variant(m, norm)
    new = NNXBatchNorm(
        m.num_features, use_running_average=m.use_running_average, axis=m.axis,
        momentum=norm.settings(m)[0], epsilon=norm.settings(m)[1], dtype=m.dtype,
        param_dtype=m.param_dtype,
        use_bias=False, use_scale=False, axis_name=norm.axis_name,
        axis_index_groups=m.axis_index_groups, use_fast_variance=m.use_fast_variance,
        promote_dtype=m.promote_dtype, rngs=nnx.Rngs(0), **norm.switches(),
    )  # fmt: skip
    new.mean, new.var = m.mean, m.var
    if m.use_scale and norm.use_scale:
        new.scale, new.use_scale = m.scale, True
    if m.use_bias and norm.use_bias:
        new.bias, new.use_bias = m.bias, True
    return new


def _nnx_variant(m: nnx.BatchNorm, norm: Norm) -> nnx.Module:
    kw = dict(norm.variant, dtype=m.dtype, param_dtype=m.param_dtype, use_bias=False,
              use_scale=False)  # fmt: skip
    if norm.kind == "batch_renorm":
        kw |= dict(use_running_average=m.use_running_average, axis=m.axis,
                   momentum=norm.settings(m)[0], epsilon=norm.settings(m)[1])  # fmt: skip
    new = variants_nnx.VARIANTS[norm.kind](m.num_features, rngs=nnx.Rngs(0), **kw)
    if norm.kind == "batch_renorm":
        new.mean, new.var = m.mean, m.var
    if m.use_scale and norm.use_scale:
        new.scale, new.use_scale = m.scale, True
    if m.use_bias and norm.use_bias and norm.kind != "rms":
        new.bias, new.use_bias = m.bias, True
    return new
