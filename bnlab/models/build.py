"""From the ``model`` and ``norm`` configs to a :class:`~bnlab.models.network.Network`.

``model._target_`` names a ``flax.linen.Module`` or ``flax.nnx.Module`` class (the
presets: ``bnlab.models.MLP``, ``CNN``, ``VGG``, ``ResNet``), a ``functools.partial`` of
one (flax examples' ``ResNet18 = partial(ResNet, stage_sizes=...)``) or a function that
returns a module (NNX when it takes ``rngs``); the other ``model.*`` keys
are its arguments (nested ``_target_`` nodes instantiated with Hydra). bnlab adds, where the constructor takes them and the config does not set them:

- ``norm``: a factory of bnlab's BN with the ``norm`` config (linen: ``bnlab.norm.
  BatchNorm``/``NoNorm``, called as ``norm(name=...)(x, use_running_average=...)``;
  NNX: ``bnlab.norm.NNXBatchNorm``/``NNXNoNorm``, called as ``norm(num_features,
  rngs=rngs)``);
- ``num_classes``: the dataset's;
- ``rngs`` (NNX): the member's init key.

A model that hard-codes Flax's BatchNorm gets bnlab's in its place
(:mod:`bnlab.models.sites`). ``model.activation`` may be a name or
``{_target_: a JAX function}`` (:mod:`bnlab.models.activations`); it is passed as the
function unless the constructor is a preset, which takes names too.

:func:`check_model` raises every error a user can cause, one line each, before data
loads; :func:`build_networks` builds the training and probe networks once the data's
shape is known, and checks ``probe.sites`` against the sites found.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from bnlab.errors import UserError, say
from bnlab.models import activations
from bnlab.models.network import LinenNetwork, Network, NNXNetwork
from bnlab.models.resnet import SHORTCUTS, blocks_per_stage
from bnlab.models.sites import Norm
from bnlab.models.substitute import substitute_nnx
from bnlab.norm import BatchNorm, NNXBatchNorm, NNXNoNorm, NoNorm, variants_linen, variants_nnx
from bnlab.norm.variants import NormFitError

PRESETS = {
    "bnlab.models.MLP": "mlp",
    "bnlab.models.CNN": "cnn",
    "bnlab.models.VGG": "vgg",
    "bnlab.models.ResNet": "resnet",
}
CONV_PRESETS = ("cnn", "vgg", "resnet")
INJECTED = ("norm", "num_classes", "rngs")


def _norm_kwargs(cfg: Any, axis_name: str | None, noise_axis: str | None) -> dict[str, Any]:
    kw = dict(
        use_scale=cfg.use_scale, use_bias=cfg.use_bias, stats_grad=cfg.stats_grad,
        ghost_batch_size=cfg.ghost_batch_size, axis_name=axis_name, center_only=cfg.center_only,
        noise_mean=cfg.noise_mean, noise_std=cfg.noise_std, noise_axis=noise_axis,
    )  # fmt: skip
    # unset (null): the layer's own default (Flax's 0.99 and 1e-5)
    kw |= {k: getattr(cfg, k) for k in ("momentum", "epsilon") if getattr(cfg, k) is not None}
    return kw


def _variant_kwargs(cfg: Any, axis_name: str | None) -> dict[str, Any]:
    """The settings of a normalizer other than BN (``norm.kind``) from the norm config."""
    kw: dict[str, Any] = dict(use_scale=cfg.use_scale, use_bias=cfg.use_bias)
    if cfg.epsilon is not None:
        kw["epsilon"] = cfg.epsilon
    if cfg.kind == "group":
        kw["groups"] = cfg.groups
    if cfg.kind == "batch_renorm":
        kw |= dict(r_max=cfg.r_max, d_max=cfg.d_max, warmup=cfg.renorm_warmup,
                   r_max_steps=cfg.r_max_steps, d_max_steps=cfg.d_max_steps, axis_name=axis_name)  # fmt: skip
        if cfg.momentum is not None:
            kw["momentum"] = cfg.momentum
    return kw


def make_norm(cfg: Any, axis_name: str | None = None, noise_axis: str | None = None):
    """The linen norm factory a model plugs into every hidden layer (``axis_name``:
    sync BN; ``noise_axis``: the axis a batch is split over, for noisy BN's global noise)."""
    if not cfg.normalizes:
        return NoNorm
    if cfg.kind != "batch":
        return partial(variants_linen.VARIANTS[cfg.kind], **_variant_kwargs(cfg, axis_name))
    return partial(BatchNorm, **_norm_kwargs(cfg, axis_name, noise_axis))


def make_nnx_norm(cfg: Any, axis_name: str | None = None, noise_axis: str | None = None):
    """The NNX norm factory: ``norm(num_features, rngs=rngs)``."""
    if not cfg.normalizes:
        return NNXNoNorm
    if cfg.kind != "batch":
        return partial(variants_nnx.VARIANTS[cfg.kind], **_variant_kwargs(cfg, axis_name))
    return partial(NNXBatchNorm, **_norm_kwargs(cfg, axis_name, noise_axis))


def substitution(cfg: Any, axis_name: str | None = None, noise_axis: str | None = None) -> Norm:
    """What replaces a hard-coded Flax BatchNorm under the ``norm`` config ``cfg``."""
    # momentum and epsilon: the layer keeps its own unless the config sets them
    variant = () if cfg.kind == "batch" else tuple(
        (k, v) for k, v in _variant_kwargs(cfg, axis_name).items()
        if k not in ("use_scale", "use_bias"))  # fmt: skip
    return Norm(normalizes=cfg.normalizes, kind=str(cfg.kind), variant=variant,
                **_norm_kwargs(cfg, axis_name, noise_axis))  # fmt: skip


# --------------------------------------------------------------------------- checks


def add_import_path(paths: list[str]) -> None:
    """Put ``import_path`` folders first on ``sys.path`` (relative to the working dir)."""
    for p in reversed(paths):
        p = str(Path(p).expanduser().resolve())
        if p not in sys.path:
            sys.path.insert(0, p)


def _target(model: dict) -> str:
    t = model.get("_target_")
    if not isinstance(t, str) or not t or t == "???":
        raise UserError(
            "model needs a _target_: model=mlp|cnn|vgg|resnet, or model._target_=pkg.module.Class"
        )
    return t


def _partials(obj: Any) -> tuple[list[partial], Any]:
    """The ``functools.partial`` layers around ``obj`` (outermost first) and what they wrap."""
    chain = []
    while isinstance(obj, partial):
        chain.append(obj)
        obj = obj.func
    return chain, obj


def model_class(model: dict) -> Any:
    """What ``model._target_`` names: a linen or NNX Module class, a ``functools.partial``
    of one, or a function returning a module; one-line errors."""
    t = _target(model)
    try:
        obj = activations.locate(t)
    except ImportError as e:
        raise UserError(f"model._target_={t}: {e} (is its folder in import_path?)") from None
    base = _partials(obj)[1]
    if isinstance(base, type) and issubclass(base, (nn.Module, nnx.Module)):
        return obj
    if not isinstance(base, type) and callable(base) and inspect.isroutine(base):
        return obj
    raise UserError(
        f"model._target_={t} is not a flax.linen.Module or flax.nnx.Module class, a "
        "functools.partial of one, or a function returning a module"
    )


def is_nnx(factory: Any) -> bool:
    """Whether ``factory`` builds an NNX module (a function: whether it takes ``rngs``)."""
    base = _partials(factory)[1]
    if isinstance(base, type):
        return issubclass(base, nnx.Module)
    return "rngs" in _parameters(factory)[0]


def _parameters(factory: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    chain, base = _partials(factory)
    # NNX's metaclass hides __init__'s signature behind (*args, **kwargs)
    fn = base.__init__ if isinstance(base, type) and issubclass(base, nnx.Module) else base
    params = dict(inspect.signature(fn).parameters)
    for k in ("parent", "name", "self"):
        params.pop(k, None)
    for p in reversed(chain):  # innermost first: bound positionals go, keywords get defaults
        positional = [k for k, v in params.items()
                      if v.kind in (v.POSITIONAL_ONLY, v.POSITIONAL_OR_KEYWORD)]  # fmt: skip
        for k in positional[: len(p.args)]:
            del params[k]
        for k, v in p.keywords.items():
            if k in params:
                params[k] = params[k].replace(default=v, kind=inspect.Parameter.KEYWORD_ONLY)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, var_kw


def check_model(model: dict, import_path: list[str] | None = None) -> type:
    """Every model error that needs no data, one line each: the target, its arguments,
    the preset's values, the activation. Returns the class."""
    add_import_path(list(import_path or []))
    cls = model_class(model)
    t = _target(model)
    params, var_kw = _parameters(cls)
    for key in model:
        if key == "_target_":
            continue
        if key == "norm":
            raise UserError("model.norm is not a model key: choose the norm with norm=...")
        if key not in params and not var_kw:
            takes = ", ".join(k for k in params if k not in INJECTED) or "nothing"
            raise UserError(f"model.{key}: {t} takes no argument {key!r} (it takes: {takes})")
    for key, p in params.items():
        if p.default is p.empty and key not in model and key not in INJECTED:
            raise UserError(f"model._target_={t} needs model.{key}: add +model.{key}=...")
    if "activation" in model:
        try:
            activations.resolve(model["activation"])
        except (ValueError, ImportError) as e:
            raise UserError(f"model.activation: {e}") from None
    _check_preset(PRESETS.get(t), model)
    return cls


def _positive_ints(key: str, values: Any) -> None:
    flat = [v for row in values for v in (row if isinstance(row, list | tuple) else [row])]
    if any(not isinstance(v, int) or v < 1 for v in flat):
        raise UserError(f"model.{key}={values} must hold positive integers")


def _check_preset(name: str | None, m: dict) -> None:
    if name in ("mlp", "cnn"):
        if not m["features"]:
            raise UserError("model.features=[] needs at least one hidden layer width, e.g. [100]")
        _positive_ints("features", m["features"])
        if name == "cnn":
            if not m["channels"]:
                raise UserError("model=cnn needs model.channels, e.g. [32,64]")
            _positive_ints("channels", m["channels"])
        std = m["init_std"]
        if std not in (None, "he") and not (isinstance(std, (int, float)) and std > 0):
            raise UserError(
                f"model.init_std={std} must be a std > 0, he (He normal) or null (LeCun normal)"
            )
    elif name == "vgg":
        if not m["stages"] or not all(m["stages"]):
            raise UserError(
                f"model.stages={m['stages']} needs stages of conv widths, e.g. [[64],[128]]"
            )
        _positive_ints("stages", m["stages"])
        _positive_ints("features", m["features"])
    elif name == "resnet":
        try:
            blocks_per_stage(m["depth"])
        except ValueError as e:
            raise UserError(f"model.{e}") from None
        _positive_ints("width", [m["width"]])
        if m["shortcut"] not in SHORTCUTS:
            raise UserError(f"model.shortcut={m['shortcut']} must be one of {', '.join(SHORTCUTS)}")


def check_input(model: dict, image_ndim: int) -> None:
    """The conv presets need NHWC images (data.flatten=false)."""
    name = PRESETS.get(_target(model))
    if name in CONV_PRESETS and image_ndim != 4:
        raise UserError(f"model={name} needs NHWC images: set data.flatten=false")


# --------------------------------------------------------------------------- building


def build_network(model: dict, norm: Any, num_classes: int, axis_name: str | None = None,
                  noise_axis: str | None = None) -> Network:  # fmt: skip
    """The network of the ``model`` config with the ``norm`` config's BN (``axis_name``:
    sync BN's axis; ``noise_axis``: the axis a batch is split over)."""
    from hydra.utils import instantiate

    cls = model_class(model)
    params, var_kw = _parameters(cls)
    nnx_model = is_nnx(cls)
    # nested ``_target_`` nodes instantiated by Hydra; bnlab's objects (classes that are
    # dataclasses, which Hydra would read as configs) passed beside them
    args = instantiate({k: v for k, v in model.items() if k not in ("_target_", "activation")},
                       _convert_="all")  # fmt: skip
    extra: dict[str, Any] = {}
    preset = PRESETS.get(model["_target_"])
    if "activation" in model:
        act = model["activation"]
        extra["activation"] = act if preset and isinstance(act, str) else activations.resolve(act)
    if "norm" in params:
        make = make_nnx_norm if nnx_model else make_norm
        extra["norm"] = make(norm, axis_name, noise_axis)
    if "num_classes" in params and "num_classes" not in model:
        extra["num_classes"] = num_classes
    sub = substitution(norm, axis_name, noise_axis)
    shortcut = {}
    if preset in ("mlp", "cnn"):
        shortcut = dict(activation=model["activation"], norm_position=str(model["norm_position"]))
    if not nnx_model:
        module = cls(**args, **extra)
        if not isinstance(module, nn.Module):
            raise UserError(
                f"model._target_={model['_target_']} returned a {type(module).__name__}, not a "
                "flax.linen.Module (a function returning an nnx.Module takes rngs)"
            )
        return LinenNetwork(module, sub, **shortcut)

    def construct(rngs: nnx.Rngs) -> nnx.Module:
        m = cls(**args, **extra, rngs=rngs)
        if not isinstance(m, nnx.Module):
            raise ValueError(f"it returned a {type(m).__name__}, not a flax.nnx.Module")
        substitute_nnx(m, sub)
        return m

    try:
        return NNXNetwork(construct, sub, **shortcut)
    except ValueError as e:
        raise UserError(f"model._target_={model['_target_']}: {e}") from None


def select_sites(names: list[str], patterns: list[str],
                 outputs: list[str] = ()) -> tuple[str, ...]:  # fmt: skip
    """The sites matching any of the glob ``patterns`` (``*`` spans ``/``), in order,
    then the module outputs (``<path>/out`` of any other module call) that a pattern
    other than the bare ``*`` matches; a pattern matching none is a one-line error
    (``*``, every site, may match none: a linear model has no sites)."""
    for pat in patterns:
        if pat != "*" and not fnmatch.filter([*names, *outputs], pat):
            some = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise UserError(
                f"probe.sites: {pat!r} matches none of the model's {len(names)} sites ({some})"
                f" or module outputs ({_some(outputs)})"
            )
    picked = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return tuple(picked + [n for n in outputs
                           if any(p != "*" and fnmatch.fnmatchcase(n, p) for p in patterns)])  # fmt: skip


def _some(names: list[str]) -> str:
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "none"


def build_networks(cfg: Any, num_classes: int, x: jax.ShapeDtypeStruct, data_devices: int,
                   axis: str) -> tuple[Network, Network]:  # fmt: skip
    """The training network (sync BN over ``axis`` with ``data_devices`` > 1) and the
    probe network (local statistics), their sites found on an abstract batch like
    ``x`` and chosen by ``probe.sites``. One-line errors where the model fails."""
    add_import_path(list(cfg.import_path))
    split = axis if data_devices > 1 else None
    sync = split if cfg.norm.sync and cfg.norm.ghost_batch_size is None else None
    net = build_network(cfg.model, cfg.norm, num_classes, sync, split)
    probe_net = build_network(cfg.model, cfg.norm, num_classes) if split else net
    net.weight_std = probe_net.weight_std = cfg.norm.weight_standardization
    try:
        layout = probe_net.discover(x)
    except NormFitError as e:
        raise UserError(str(e)) from None
    except Exception as e:  # the user's model failed on the data's shape
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(
            f"model._target_={cfg.model['_target_']} fails on a batch of shape {x.shape}: "
            f"{type(e).__name__}: {first}"
        ) from None
    check_output(cfg, layout, x.shape[0], num_classes)
    for path, rate in layout.dropouts.items():
        if not (isinstance(rate, int | float) and 0 <= rate < 1):
            raise UserError(
                f"model._target_={cfg.model['_target_']}: the dropout layer {path} has rate "
                f"{rate}; a dropout rate must lie in [0, 1)"
            )
    patterns, outputs = list(cfg.probe.sites), list(layout.outputs)
    if not layout.sites and patterns == ["*"] and outputs:
        say(f"warning: the default probe.sites finds no site in model._target_="
            f"{cfg.model['_target_']}: choose module outputs with probe.sites=[...], e.g. "
            f"{_some(outputs)}")  # fmt: skip
    probe_net.select(select_sites(list(layout.sites), patterns, outputs))
    net.layout = layout
    return net, probe_net


def check_output(cfg: Any, layout: Any, batch: int, num_classes: int) -> None:
    """The model's output is one array of logits, ``(batch, num_classes)``; a BN setting
    the model has no layer for is said in one line, never recorded as if it applied."""
    target, out = cfg.model["_target_"], layout.output
    if not isinstance(out, jax.ShapeDtypeStruct):
        kind = type(out).__name__ if not isinstance(out, list | tuple) else (
            f"a {type(out).__name__} of {len(out)}")  # fmt: skip
        raise UserError(
            f"model._target_={target} returns {kind}; bnlab needs one array of logits, "
            f"shape ({batch}, {num_classes}): return only the logits"
        )
    if out.shape != (batch, num_classes):
        raise UserError(
            f"model._target_={target} returns shape {tuple(out.shape)} for a batch of {batch}; "
            f"the data has {num_classes} classes (or target columns), so it must be "
            f"({batch}, {num_classes}) "
            f"(set the model's number of outputs to {num_classes})"
        )
    if cfg.norm.normalizes and not (layout.batch_stats or layout.bnlab_norm):
        say(f"warning: model._target_={target} has no BatchNorm layer, so norm={cfg.norm.name} "
            f"changes nothing in it (norm=none records what runs)")  # fmt: skip
