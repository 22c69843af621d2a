"""One functional interface for any Flax model, linen or NNX: :class:`Network`.

The engine never calls a model itself. It calls

- ``init_state(key, x) -> (params, batch_stats, extra)`` and
- ``apply_state(params, batch_stats, x, *, train, noise_key=None, capture=False,
  extra=None, rng=None, dropout=None, shard=None) -> (logits, new_batch_stats, new_extra,
  sites)``

(``init``/``apply``: the same without ``extra``, for models that hold no other state),
where ``params``, ``batch_stats`` and ``extra`` are plain nested dicts of arrays
(string keys), the same for linen and NNX, so members (``vmap``), devices
(``shard_map``), probes, Orbax checkpoints and records do not know which API built the
model. ``train`` selects batch statistics (True) or running averages (False);
``noise_key`` is noisy BN's key of this step; ``capture=True`` returns the probe's
sites (``selected``, see :meth:`Network.discover`), ``False`` none. ``extra`` is every
other variable the model keeps (:mod:`bnlab.models.variables`: RNG streams, counters,
user collections). ``rng`` is the key of this call's random draws (linen: the
``dropout`` and ``params`` rngs, which any other rng name falls back to; NNX: the
``rngs`` of a ``__call__`` that takes them, and dropout layers without a stream of
their own); ``dropout`` (default ``train``) turns every dropout layer on or off,
whatever the model's own flag says. ``shard`` (under data parallelism, the data
shard's index; None on one device) is folded into ``rng`` and into the keys of NNX
streams stored in the model, so each shard draws its own masks; the carried keys stay
the same on every shard, and ``shard=None`` draws exactly what a single device draws.

A model's ``__call__`` gets ``train=`` when it takes ``train`` (or ``training``); an
NNX model's BN layers, and a linen model's substituted Flax BN when its ``__call__``
takes neither, get the mode from bnlab. NNX models are split with ``nnx.split``
into graph and state once; each ``apply`` merges the graph with the given state.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from bnlab import measure as probe
from bnlab.models import variables
from bnlab.models.builtin import activation_outputs, activation_sources, flatten_sites, layer_names
from bnlab.models.sites import ALL, Norm, Recorder, intercept_linen, intercept_nnx
from bnlab.models.tracing import call_kwarg, has_conv, restore, stringify, train_kwarg
from bnlab.norm.variants import standardize_weights

Array = jax.Array


@dataclass
class Layout:
    """What one abstract forward pass finds (:meth:`Network.discover`)."""

    sites: dict[str, jax.ShapeDtypeStruct]  # every site, in call order
    sown: bool  # the model sows its own sites
    linear: list[str]  # dense/conv layers (module paths) in call order
    flax_bn: bool  # a linen model hard-coding flax.linen.BatchNorm
    convs: bool  # the forward pass convolves
    dropouts: dict[str, Any] = field(default_factory=dict)  # dropout layer -> rate
    bn_settings: dict[str, tuple] = field(default_factory=dict)  # BN layer -> momentum, eps
    outputs: dict[str, Any] = field(default_factory=dict)  # every other module's output
    selected: tuple[str, ...] = ()  # the probe's sites (probe.sites)
    derived: dict[str, str] = field(default_factory=dict)  # monotone shortcut (built-ins)
    output: Any = None  # the forward pass's output (shapes)
    batch_stats: bool = False  # the model holds batch statistics (a BatchNorm layer)
    scale_invariant: tuple[str, ...] = ()  # linear layers feeding a normalizer directly
    activation_outputs: tuple[str, ...] = ()  # sites an activation produces (dead units)
    bnlab_norm: bool = False  # a bnlab normalizer runs in it (injected or substituted)


class Network:
    """A model behind :meth:`init` and :meth:`apply` (see the module docstring).

    ``norm``: what replaces a hard-coded Flax BN (None: nothing is substituted);
    ``activation``/``norm_position``: the built-ins' settings, for the monotone
    percentile shortcut. :meth:`discover` must run once before :meth:`apply` captures.
    """

    kind = ""
    layout: Layout | None = None
    weight_std = False  # Weight Standardization of every conv kernel (norm.weight_standardization)

    def __init__(self, norm: Norm | None, activation: Any = None, norm_position: str = "before"):
        self.norm, self.activation, self.norm_position = norm, activation, norm_position

    # -- the interface -----------------------------------------------------------
    def init_state(self, key: Array, x: Array) -> tuple[dict, dict, dict]:
        raise NotImplementedError

    def apply_state(self, params: dict, batch_stats: dict, x: Array, *, train: bool,
                    noise_key: Array | None = None, capture: bool = False,
                    extra: dict | None = None, rng: Array | None = None,
                    dropout: bool | None = None, shard: Array | None = None):  # fmt: skip
        raise NotImplementedError

    def init(self, key: Array, x: Array) -> tuple[dict, dict]:
        """``(params, batch_stats)`` of :meth:`init_state`."""
        return self.init_state(key, x)[:2]

    def apply(self, params: dict, batch_stats: dict, x: Array, *, train: bool,
              noise_key: Array | None = None, capture: bool = False, **kw: Any):  # fmt: skip
        """``(logits, new_batch_stats, sites)`` of :meth:`apply_state`."""
        logits, bs, _, sites = self.apply_state(params, batch_stats, x, train=train,
                                                noise_key=noise_key, capture=capture, **kw)  # fmt: skip
        return logits, bs, sites

    # -- what the probes read ----------------------------------------------------
    def discover(self, x: jax.ShapeDtypeStruct) -> Layout:
        """Trace init and one training forward pass on an abstract batch like ``x``:
        the sites, the linear layers, the Flax BNs, the convolutions."""
        init_rec = Recorder(train=False, norm=self.norm, shapes_only=True)
        key = jax.random.key(0)
        rec = Recorder(train=True, norm=self.norm, shapes_only=True, dropout=True,
                       dropout_key=key, outputs=True)  # fmt: skip
        sown: dict[str, jax.ShapeDtypeStruct] = {}
        found_stats: list[bool] = []

        def f(x):
            params, bs, extra = self._init(key, x, init_rec)
            found_stats.append(bool(jax.tree.leaves(bs)))
            out = self._apply(self._ws(params), bs, extra, x, train=True, noise_key=key, rng=key,
                              rec=rec, sown=True)  # fmt: skip
            sown.update({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in out[3].items()})
            return out[0]

        jaxpr, output = jax.make_jaxpr(f, return_shape=True)(x)
        sites = sown if sown else rec.sites
        layout = Layout(sites=dict(sites), sown=bool(sown), linear=rec.linear,
                        flax_bn=rec.flax_bn or init_rec.flax_bn, convs=has_conv(jaxpr.jaxpr),
                        dropouts=dict(rec.dropouts), bn_settings=dict(rec.bn_settings),
                        outputs={} if sown else dict(rec.module_outputs), output=output,
                        batch_stats=any(found_stats), scale_invariant=tuple(rec.scale_invariant),
                        activation_outputs=() if sown else tuple(rec.linear_inputs),
                        bnlab_norm=rec.bnlab_norm or init_rec.bnlab_norm)  # fmt: skip
        layout.selected = tuple(layout.sites)
        if layout.sown:  # named as the built-ins': the activation's output is `post`...
            layout.activation_outputs = activation_outputs(layout.sites, self.norm_position)
        if layout.sown and self.activation is not None:
            layout.derived = activation_sources(layout.sites, self.activation, self.norm_position)
        self.layout = layout
        return layout

    def select(self, names: tuple[str, ...]) -> None:
        """Probe only ``names`` (in the order found)."""
        assert self.layout is not None
        keep = set(names)
        found = [*self.layout.sites, *self.layout.outputs]
        self.layout.selected = tuple(n for n in found if n in keep)
        self.layout.derived = {
            k: v for k, v in self.layout.derived.items() if k in keep and v in keep
        }

    def builtin_layers(self, params: dict) -> bool:
        """Whether ``params`` are laid out as the built-ins' (``layer{i}/linear`` ...
        and ``head``): then layer statistics and ICS keep the built-ins' names."""
        names = layer_names(params)
        return bool(names) and "head" in params and all("linear" in params[n] for n in names)

    def layer_stats(self, params: dict, grads: dict, batch_stats: dict,
                    updates: dict | None = None) -> dict:  # fmt: skip
        """Per-layer parameter statistics (:func:`bnlab.measure.layer_stats` for the
        built-ins' layout, else :func:`bnlab.measure.module_stats` by module path);
        ``updates``: the step's applied update (``update_ratio``)."""
        builtin = self.builtin_layers(params)
        if builtin:
            out = probe.layer_stats(params, grads, batch_stats, layer_names(params), updates)
        else:
            out = probe.module_stats(params, grads, batch_stats, updates)
        # the momentum and epsilon each BN layer ran with (a sweep over them is checkable)
        for path, (momentum, eps) in (self.layout.bn_settings if self.layout else {}).items():
            d = out.setdefault(path.split("/")[0] if builtin else path, {})
            d["bn_momentum"], d["bn_epsilon"] = jnp.float32(momentum), jnp.float32(eps)
        return out

    def ics_layers(self, params: dict) -> list[str]:
        """The layers of gradient-ICS, in network order: ``layer1``... ``head`` for the
        built-ins' layout, else every dense/conv layer with a kernel, as called."""
        if self.builtin_layers(params):
            return [*layer_names(params), "head"]
        assert self.layout is not None
        out = []
        for name in self.layout.linear:
            node = params
            for k in name.split("/"):
                node = node.get(k, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and "kernel" in node and name not in out:
                out.append(name)
        return out

    # -- helpers for subclasses --------------------------------------------------
    def _capture_set(self, capture: bool) -> Any:
        if not capture:
            return frozenset()
        assert self.layout is not None, "discover() first"
        return frozenset(self.layout.selected)

    def _outputs(self, want: Any) -> bool:
        """Whether the sites ``want`` hold a module output (every call is then intercepted)."""
        return self.layout is not None and any(n in self.layout.outputs for n in want)

    def _ws(self, params: dict) -> dict:
        return standardize_weights(params) if self.weight_std else params

    def _init(self, key, x, rec):
        raise NotImplementedError

    def _apply(self, params, bs, extra, x, *, train, noise_key, rng, rec, sown):
        raise NotImplementedError


class LinenNetwork(Network):
    """A ``flax.linen.Module`` behind the functional interface."""

    kind = "linen"

    def __init__(self, module: nn.Module, norm: Norm | None, **kw: Any):
        super().__init__(norm, **kw)
        self.module = module
        self.train_kw = train_kwarg(type(module).__call__)

    def _kw(self, train: bool) -> dict:
        return {self.train_kw: train} if self.train_kw else {}

    def _rec(self, train: bool, capture: Any, dropout: bool = False) -> Recorder:
        return Recorder(train=train, capture=capture, norm=self.norm, dropout=dropout,
                        force_mode=self.train_kw is None, outputs=self._outputs(capture))  # fmt: skip

    def _intercepts(self) -> bool:
        lay = self.layout
        return lay is None or lay.flax_bn or bool(lay.dropouts)

    def _init(self, key, x, rec):
        rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
        with intercept_linen(rec) if rec is not None else nullcontext():
            got = self.module.init(rngs, x, **self._kw(False))
        extra = {c: dict(v) for c, v in got.items()
                 if c not in ("params", "batch_stats", *variables.SOWN)}  # fmt: skip
        return (dict(got.get("params", {})), dict(got.get("batch_stats", {})),
                variables.raw(extra))  # fmt: skip

    def init_state(self, key: Array, x: Array) -> tuple[dict, dict, dict]:
        return self._init(key, x, self._rec(False, frozenset()) if self._intercepts() else None)

    def _apply(self, params, bs, extra, x, *, train, noise_key, rng, rec, sown):
        mutable = ["batch_stats", *extra] + (["sites"] if sown else [])
        rngs = {}
        if rng is not None:
            rngs = {"params": jax.random.fold_in(rng, 0), "dropout": jax.random.fold_in(rng, 1)}
        if noise_key is not None:
            rngs["noise"] = noise_key
        with intercept_linen(rec) if rec is not None else nullcontext():
            logits, upd = self.module.apply({"params": params, "batch_stats": bs, **extra}, x,
                                            mutable=mutable, rngs=rngs or None,
                                            **self._kw(train))  # fmt: skip
        new_bs = dict(upd.get("batch_stats", bs))
        new_extra = {c: variables.like(variables.raw(dict(upd[c])), v) for c, v in extra.items()}
        sites = flatten_sites(upd["sites"]) if sown and "sites" in upd else {}
        return logits, new_bs, new_extra, sites

    def apply_state(self, params, batch_stats, x, *, train, noise_key=None, capture=False,
                    extra=None, rng=None, dropout=None, shard=None):  # fmt: skip
        want = self._capture_set(capture)
        lay = self.layout
        if shard is not None and rng is not None:
            rng = jax.random.fold_in(rng, shard)
        sown = bool(want) and lay is not None and lay.sown
        dropout = train if dropout is None else dropout
        rec = None
        if self._intercepts() or (want and not sown):
            rec = self._rec(train, frozenset() if sown else want, dropout)
        logits, new_bs, new_extra, sites = self._apply(
            self._ws(params), batch_stats, {} if extra is None else extra, x, train=train,
            noise_key=noise_key, rng=rng, rec=rec, sown=sown,
        )  # fmt: skip
        if not sown and rec is not None:
            sites = rec.sites
        return logits, new_bs, new_extra, {k: v for k, v in sites.items() if k in want}


# sown values are per-call outputs; everything else but Param and BatchStat is state
EXTRA = nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat, nnx.Intermediate))


class NNXNetwork(Network):
    """An ``flax.nnx.Module`` behind the functional interface. ``construct(rngs)``
    builds the model (with its norm injected or substituted). Every variable but
    ``nnx.Param``, ``nnx.BatchStat`` and ``nnx.Intermediate`` is ``extra`` state; a
    variable whose value is not an array is refused (bnlab cannot carry it)."""

    kind = "nnx"

    def __init__(self, construct: Callable[[nnx.Rngs], nnx.Module], norm: Norm | None,
                 **kw: Any):  # fmt: skip
        super().__init__(norm, **kw)
        self.construct = construct
        abstract = nnx.eval_shape(lambda: construct(nnx.Rngs(0)))
        self.graphdef, params, bs, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
        for path, var in nnx.to_flat_state(rest):
            if not hasattr(var.get_value(), "shape"):
                raise ValueError(
                    f"the model holds {type(var).__name__} state at "
                    f"{'/'.join(map(str, path))} whose value is not an array: bnlab carries "
                    "array-valued variables only"
                )
        self.templates = tuple(nnx.to_pure_dict(s) for s in (params, bs, rest))
        call = type(abstract).__call__
        self.train_kw = train_kwarg(call)
        self.rngs_kw = call_kwarg(call, ("rngs",))

    def _init(self, key, x, rec):
        model = self.construct(nnx.Rngs(key))
        _, params, bs, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        return tuple(variables.raw(nnx.to_pure_dict(s)) for s in (params, bs, rest))

    def init_state(self, key: Array, x: Array) -> tuple[dict, dict, dict]:
        return self._init(key, x, None)

    def _apply(self, params, bs, extra, x, *, train, noise_key, rng, rec, sown):
        tp, tb, te = self.templates
        model = nnx.merge(self.graphdef, restore(params, tp), restore(bs, tb),
                          variables.typed(extra, te))  # fmt: skip
        if rec is None:
            rec = Recorder(train=train, capture=frozenset())
        rec.noise_rngs = None if noise_key is None else nnx.Rngs(noise=noise_key)
        key = jax.random.key(0) if rng is None else rng
        rec.dropout_key = jax.random.fold_in(key, 1)
        kw = {self.train_kw: train} if self.train_kw else {}

        def forward(model, x):
            if self.rngs_kw:
                kw[self.rngs_kw] = nnx.Rngs(jax.random.fold_in(key, 2))
            with intercept_nnx(model, rec):
                return model(x, **kw)

        logits, inter = nnx.capture(forward, nnx.Intermediate)(model, x)
        new_bs = stringify(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
        new_extra = variables.like(variables.raw(nnx.to_pure_dict(nnx.state(model, EXTRA))), te)
        sites = {}
        if sown:
            sites = {"/".join(map(str, p)): v.get_value()[-1]
                     for p, v in nnx.to_flat_state(inter)}  # fmt: skip
        return logits, new_bs, new_extra, sites

    def apply_state(self, params, batch_stats, x, *, train, noise_key=None, capture=False,
                    extra=None, rng=None, dropout=None, shard=None):  # fmt: skip
        want = self._capture_set(capture)
        sown = bool(want) and self.layout is not None and self.layout.sown
        extra = {} if extra is None else extra
        carried = extra
        if shard is not None:  # this data shard's own draws (module docstring)
            rng = jax.random.fold_in(jax.random.key(0) if rng is None else rng, shard)
            extra = variables.fold_keys(extra, self.templates[2], shard)
        rec = Recorder(train=train, capture=frozenset() if sown else want,
                       dropout=train if dropout is None else dropout,
                       outputs=not sown and self._outputs(want))  # fmt: skip
        logits, new_bs, new_extra, sites = self._apply(
            self._ws(params), batch_stats, extra, x, train=train, noise_key=noise_key, rng=rng,
            rec=rec, sown=sown,
        )  # fmt: skip
        if shard is not None:
            new_extra = variables.keep_keys(new_extra, carried, self.templates[2])
        if not sown:
            sites = rec.sites
        return logits, new_bs, new_extra, {k: v for k, v in sites.items() if k in want}


__all__ = ["ALL", "Layout", "LinenNetwork", "NNXNetwork", "Network"]
