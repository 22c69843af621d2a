"""Activation sites found by interception, and bnlab's BN put in place of Flax's.

A model need not help the probes. While it runs, bnlab intercepts the calls of its
layers (linen: ``nn.intercept_methods``; NNX: the ``__call__`` of the layer classes
it holds, patched for the duration of the call, per thread) and records, by module
path:

- every norm layer's input (``<path>/in``, only where the layer normalizes) and
  output (``<path>/out``): bnlab's and Flax's BatchNorm, NoNorm, LayerNorm, GroupNorm,
  RMSNorm;
- the input of every dense or conv layer (``<path>/in``), i.e. the output of the
  activation before it, since activations are plain functions in Flax; not of the
  first one called, whose input is the data.

A layer called twice records ``in.1``, ``out.1`` the second time. Models that sow
their own sites (the built-in MLP and CNN: ``layer{i}/prenorm|pre|post``; any linen
model sowing into ``sites``, any NNX model sowing ``nnx.Intermediate``) keep those
names and are not intercepted for probes.

**Substitution.** A linen model that hard-codes ``flax.linen.BatchNorm`` runs bnlab's
BN in its place (:func:`bnlab.norm.linen.forward`, the same variables); an NNX model's
``flax.nnx.BatchNorm`` layers are replaced by :class:`bnlab.norm.NNXBatchNorm` when it is
built (:func:`bnlab.models.substitute.substitute_nnx`), their state kept. The layer keeps its own settings
(axis, momentum, epsilon, dtypes, initializers, fast variance) and takes the run's
study switches (``norm.stats_grad``, ghost batches, ``center_only``, noise; no scale
or bias where the norm config turns them off), the run's sync axis (its own
``axis_name`` is replaced: bnlab names the mesh axes), and with ``norm=none`` becomes
the identity (no variables). With ``norm=bn`` it computes what Flax's computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from bnlab.norm import BatchNorm, NNXBatchNorm, NNXNoNorm, NoNorm, variants_linen, variants_nnx
from bnlab.norm.linen import forward as linen_bn_forward

LINEAR, NORM, PASS, FLAX_BN, DROPOUT = "linear", "norm", "pass", "flax_bn", "dropout"
OUTPUT = "output"  # any other module: its output, a site only where probe.sites names it
ALL = None  # capture every site

LINEN_LINEAR = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.ConvLocal, nn.Einsum)
LINEN_NORMS = (BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, variants_linen._Norm)
NNX_LINEAR = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose, nnx.Einsum)
NNX_NORMS = (
    NNXBatchNorm,
    nnx.BatchNorm,
    nnx.LayerNorm,
    nnx.GroupNorm,
    nnx.RMSNorm,
    variants_nnx._Norm,
)
BNLAB_NORMS = (BatchNorm, NNXBatchNorm, variants_linen._Norm, variants_nnx._Norm)


@dataclass(frozen=True)
class Norm:
    """What replaces a hard-coded Flax BatchNorm: the run's norm config and sync axes."""

    normalizes: bool = True
    use_scale: bool = True
    use_bias: bool = True
    stats_grad: bool = True
    ghost_batch_size: int | None = None
    center_only: bool = False
    noise_mean: float = 0.0
    noise_std: float = 0.0
    axis_name: str | None = None
    noise_axis: str | None = None
    momentum: float | None = None  # None: the layer's own
    epsilon: float | None = None
    kind: str = "batch"  # another normalizer (bnlab.norm.variants_linen.VARIANTS) in its place
    variant: tuple = ()  # that normalizer's settings, as (key, value) pairs

    def settings(self, m: Any) -> tuple[float, float]:
        """The momentum and epsilon a substituted layer ``m`` runs with."""
        return (m.momentum if self.momentum is None else self.momentum,
                m.epsilon if self.epsilon is None else self.epsilon)  # fmt: skip

    def switches(self) -> dict[str, Any]:
        return dict(stats_grad=self.stats_grad, ghost_batch_size=self.ghost_batch_size,
                    center_only=self.center_only, noise_mean=self.noise_mean,
                    noise_std=self.noise_std, noise_axis=self.noise_axis)  # fmt: skip


def linen_kind(m: Any) -> str | None:
    if isinstance(m, nn.Dropout):
        return DROPOUT
    if isinstance(m, nn.BatchNorm):
        return FLAX_BN
    if isinstance(m, NoNorm):
        return PASS
    if isinstance(m, LINEN_NORMS):
        return NORM
    if isinstance(m, LINEN_LINEAR):
        return LINEAR
    return None


def nnx_kind(m: Any) -> str | None:
    if isinstance(m, nnx.Dropout):
        return DROPOUT
    if isinstance(m, NNXNoNorm):
        return PASS
    if isinstance(m, NNX_NORMS):
        return NORM
    if isinstance(m, NNX_LINEAR):
        return LINEAR
    return None


class Recorder:
    """What one forward pass meets: its sites (those in ``capture``: a set of names, or
    ``ALL``), its linear layers in call order, whether it holds a Flax linen BN. It also
    runs the substitution (``norm``) and sets every bnlab NNX BN's mode (``train``) and
    noise key (``noise_rngs``); ``force_mode``: a substituted linen BN takes its mode
    from ``train`` too (for a model whose ``__call__`` takes no ``train``).

    Dropout layers (linen and NNX) run as ``dropout`` says, whatever the model passes:
    off, they return their input; on, they mask (NNX: with the layer's own stream, the
    rngs the model passes, else a key folded from ``dropout_key``). ``dropouts`` maps
    each dropout layer met to its rate. ``outputs``: also record ``<path>/out`` of every
    other module call (into ``module_outputs``, or ``sites`` where ``capture`` names it)."""

    def __init__(self, *, train: bool, capture: Any = ALL, norm: Norm | None = None,
                 force_mode: bool = False, noise_rngs: Any = None, shapes_only: bool = False,
                 dropout: bool = False, dropout_key: Any = None, outputs: bool = False):  # fmt: skip
        self.dropout, self.dropout_key, self.outputs = dropout, dropout_key, outputs
        self.module_outputs: dict[str, Any] = {}
        self.dropouts: dict[str, Any] = {}
        self.bn_settings: dict[str, tuple[float, float]] = {}  # BN layer -> momentum, epsilon
        self.dropout_calls = 0
        self.train, self.capture = train, capture
        self.norm, self.force_mode, self.noise_rngs = norm, force_mode, noise_rngs
        self.shapes_only = shapes_only
        self.sites: dict[str, Any] = {}
        self.seen: set[str] = set()
        self.linear: list[str] = []
        self.linear_inputs: list[str] = []  # the sites <linear>/in: activations' outputs
        self.scale_invariant: list[str] = []  # linear layers feeding a normalizer directly
        self._last_linear: tuple[str, Any] | None = None  # (path, its output)
        self.flax_bn = False
        self.bnlab_norm = False  # met a bnlab norm layer (injected or substituted)
        self.active: set[int] = set()

    def _put(self, name: str, value: Any, found: dict | None = None) -> str:
        k, base = 0, name
        while name in self.seen:
            k += 1
            name = f"{base}.{k}"
        self.seen.add(name)
        shaped = jax.ShapeDtypeStruct(value.shape, value.dtype) if self.shapes_only else value
        if found is not None:
            found[name] = shaped
        if (found is None) if self.capture is ALL else (name in self.capture):
            self.sites[name] = shaped
        return name

    def handle(self, module: Any, path: str, kind: str, call: Callable, args: tuple,
               kwargs: dict) -> Any:  # fmt: skip
        """Run ``call(*args, **kwargs)`` (the layer) and record its sites."""
        x = args[0] if args else next(iter(kwargs.values()))
        if kind == DROPOUT:
            y = self._dropout(module, path, call, args, kwargs)
            if self._last_linear is not None and x is self._last_linear[1]:
                self._last_linear = (self._last_linear[0], y)  # dropout keeps scale
            return y
        if kind == OUTPUT:
            y = call(*args, **kwargs)
            if hasattr(y, "shape") and hasattr(y, "dtype"):
                self._put(f"{path}/out", y, self.module_outputs)
            return y
        if kind == LINEAR:
            if self.linear:  # the first layer's input is the data
                self.linear_inputs.append(self._put(f"{path}/in", x))
            self.linear.append(path)
            y = call(*args, **kwargs)
            self._last_linear = (path, y)
            if self.outputs:
                self._put(f"{path}/out", y, self.module_outputs)
            return y
        normalizes = kind == NORM or (
            kind == FLAX_BN and (self.norm is None or self.norm.normalizes)
        )
        if normalizes:
            self._put(f"{path}/in", x)
            self._note_scale_invariant(module, kind, x)
        if kind == FLAX_BN and normalizes:
            sub = self.norm.settings(module) if self.norm is not None else None
            self.bn_settings.setdefault(path, sub or (module.momentum, module.epsilon))
        elif isinstance(module, (BatchNorm, NNXBatchNorm, nnx.BatchNorm)):
            self.bn_settings.setdefault(path, (module.momentum, module.epsilon))
        self.bnlab_norm |= normalizes and (kind == FLAX_BN or isinstance(module, BNLAB_NORMS))
        if kind == FLAX_BN:
            self.flax_bn = True
            y = x if self.norm is not None and not self.norm.normalizes else self._flax_bn(
                module, call, args, kwargs)  # fmt: skip
        elif isinstance(module, (NNXBatchNorm, variants_nnx.BatchRenorm)):
            kwargs = dict(kwargs, use_running_average=not self.train)
            if module.noisy and self.train:
                kwargs["noise_key"] = self.noise_rngs
            y = call(x, **kwargs)
        else:
            y = call(*args, **kwargs)
        self._put(f"{path}/out", y)
        return y

    def _note_scale_invariant(self, module: Any, kind: str, x: Any) -> None:
        """The linear layer whose output ``x`` is (dropout aside) is scale-invariant when
        this norm divides by a statistic of its input (not mean-only BN)."""
        last = self._last_linear
        center_only = self.norm.center_only if kind == FLAX_BN and self.norm else getattr(
            module, "center_only", False)  # fmt: skip
        if last is not None and x is last[1] and not center_only:
            if last[0] not in self.scale_invariant:
                self.scale_invariant.append(last[0])

    def _dropout(self, m: Any, path: str, call: Callable, args: tuple, kwargs: dict) -> Any:
        self.dropouts.setdefault(path, m.rate)
        self.dropout_calls += 1
        if not self.dropout:
            return args[0]  # what a deterministic Dropout returns
        kwargs = dict(kwargs)
        if isinstance(m, nnx.Dropout):
            kwargs["deterministic"] = False  # the call's flag wins over the layer's
            if kwargs.get("rngs") is None and m.rngs is None:
                kwargs["rngs"] = jax.random.fold_in(self.dropout_key, self.dropout_calls)
        elif len(args) > 1:  # linen: __call__(inputs, deterministic, rng)
            args = (args[0], False, *args[2:])
        elif "deterministic" in kwargs or m.deterministic is None:
            kwargs["deterministic"] = False
        return call(*args, **kwargs)

    def _flax_bn(self, m: nn.BatchNorm, call: Callable, args: tuple, kwargs: dict) -> Any:
        """A hard-coded ``flax.linen.BatchNorm``: bnlab's BN in its place (or Flax's own
        where there is nothing to substitute)."""
        if self.norm is None:
            return call(*args, **kwargs)
        ra = args[1] if len(args) > 1 else kwargs.get("use_running_average")
        use_ra = (not self.train) if self.force_mode else nn.merge_param(
            "use_running_average", m.use_running_average, ra)  # fmt: skip
        n = self.norm
        if n.kind != "batch":
            return _linen_variant(n, m, args[0], use_ra)
        s = BatchNorm(
            None, m.axis, *n.settings(m), m.dtype, m.param_dtype,
            m.use_bias and n.use_bias, m.use_scale and n.use_scale, m.bias_init, m.scale_init,
            n.axis_name, m.axis_index_groups, m.use_fast_variance, m.force_float32_reductions,
            parent=None, **n.switches(),
        )  # fmt: skip
        return linen_bn_forward(s, m, args[0], use_ra, kwargs.get("mask"))


def _linen_variant(n: Norm, m: nn.BatchNorm, x: Any, use_ra: bool) -> Any:
    """Another normalizer in place of a hard-coded ``flax.linen.BatchNorm`` ``m``, with its
    variables (``scale``/``bias``; Batch Renorm: ``mean``/``var`` and ``steps``)."""
    kw = dict(n.variant, dtype=m.dtype, param_dtype=m.param_dtype, bias_init=m.bias_init,
              scale_init=m.scale_init, use_bias=m.use_bias and n.use_bias,
              use_scale=m.use_scale and n.use_scale, parent=None)  # fmt: skip
    if n.kind == "batch_renorm":
        kw |= dict(axis=m.axis, momentum=n.settings(m)[0], epsilon=n.settings(m)[1])
    return variants_linen.forward(variants_linen.VARIANTS[n.kind](**kw), m, x, use_ra)


# --------------------------------------------------------------------------- linen


@contextmanager
def intercept_linen(rec: Recorder):
    """Record ``rec``'s sites (and substitute Flax BN) in the linen calls inside."""

    def interceptor(next_fun, args, kwargs, context):
        kind = linen_kind(context.module) if context.method_name == "__call__" else None
        if kind is None and rec.outputs and context.method_name == "__call__":
            kind = OUTPUT
        if kind is None:
            return next_fun(*args, **kwargs)
        path = "/".join(context.module.path) or "model"
        return rec.handle(context.module, path, kind, next_fun, args, kwargs)

    with nn.intercept_methods(interceptor):
        yield rec


# --------------------------------------------------------------------------- NNX

_lock = threading.Lock()
_local = threading.local()
_patched: dict[type, list] = {}  # class -> [original __call__ or None, users]


def _patch(cls: type) -> None:
    if cls in _patched:
        _patched[cls][1] += 1
        return
    own = cls.__dict__.get("__call__")
    orig = cls.__call__

    def __call__(self, *args, **kwargs):
        stack = getattr(_local, "stack", None)
        if stack:
            paths, rec = stack[-1]
            path, kind = paths.get(id(self)), nnx_kind(self) or (OUTPUT if rec.outputs else None)
            if path is not None and kind is not None and id(self) not in rec.active:
                rec.active.add(id(self))
                try:
                    return rec.handle(self, path, kind, lambda *a, **k: orig(self, *a, **k),
                                      args, kwargs)  # fmt: skip
                finally:
                    rec.active.discard(id(self))
        return orig(self, *args, **kwargs)

    cls.__call__ = __call__
    _patched[cls] = [own, 1]


def _unpatch(cls: type) -> None:
    entry = _patched[cls]
    entry[1] -= 1
    if entry[1]:
        return
    del _patched[cls]
    if entry[0] is None:
        del cls.__call__
    else:
        cls.__call__ = entry[0]


def module_paths(model: nnx.Module) -> dict[int, str]:
    """``{id(module): 'a/b/0/c'}`` of every submodule of an NNX model."""
    return {id(m): "/".join(map(str, p)) or "model" for p, m in nnx.iter_modules(model)}


@contextmanager
def intercept_nnx(model: nnx.Module, rec: Recorder):
    """Record ``rec``'s sites (and set bnlab BN's mode and noise key) in the calls of
    ``model``'s layers inside (this thread only)."""
    paths = module_paths(model)
    classes = {type(m) for _, m in nnx.iter_modules(model)
               if rec.outputs or nnx_kind(m) is not None}  # fmt: skip
    with _lock:
        for cls in classes:
            _patch(cls)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append((paths, rec))
    try:
        yield rec
    finally:
        stack.pop()
        with _lock:
            for cls in classes:
                _unpatch(cls)
