"""The nonlinearities a preset takes: a name, or any JAX function by ``_target_``.

``model.activation=gelu`` names one of :data:`ACTIVATIONS`;
``'model.activation={_target_: jax.nn.leaky_relu, negative_slope: 0.1}'`` imports the
function and binds the other keys (``functools.partial``). :data:`MONOTONE` lists the
names whose float32 XLA implementation never decreases (tests/test_probe.py checks it
on millions of consecutive floats): only there may a probe read ``post``'s percentiles
through ``pre``'s order statistics. gelu and silu dip below zero before they rise
(not monotone), tanh's float32 approximation steps back by an ulp near +-1, and a
function by ``_target_`` is never assumed monotone.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def _identity(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # the erf form (PyTorch's)
    "silu": jax.nn.silu,
    "linear": _identity,
}
MONOTONE = frozenset({"sigmoid", "relu", "linear"})


def locate(path: str) -> Any:
    """The object at a dotted import path (``pkg.mod.name``), as Hydra locates a
    ``_target_``. Raises ``ImportError`` with one line saying what is missing."""
    parts = path.split(".")
    if not all(parts):
        raise ImportError(f"{path!r} is not a dotted import path (pkg.module.Name)")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # this module (or its parent) does not exist: try a shorter one
            raise ImportError(f"importing {name} failed: {type(e).__name__}: {e}") from None
        except Exception as e:  # the module exists but fails on import
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ImportError(f"importing {name} failed: {type(e).__name__}: {first}") from None
        for j, attr in enumerate(parts[i:], i):
            if not hasattr(obj, attr):
                where = ".".join(parts[:j])
                raise ImportError(f"cannot import {path}: {where} has no {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {path}: no module named {parts[0]!r}")


def resolve(activation: str | Mapping | Callable) -> Activation:
    """The function of ``activation``: a name of :data:`ACTIVATIONS`, a mapping with a
    ``_target_`` (the function, its other keys bound as keyword arguments), or a
    callable (returned as is). Raises ``ValueError`` naming the choices."""
    if callable(activation):
        return activation
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)} or "
                "give any JAX function as {_target_: pkg.module.function}"
            )
        return ACTIVATIONS[activation]
    if isinstance(activation, Mapping) and "_target_" in activation:
        kwargs = {k: v for k, v in activation.items() if k not in ("_target_", "_partial_")}
        fn = locate(str(activation["_target_"]))
        if not callable(fn) or isinstance(fn, type):
            raise ValueError(f"activation _target_={activation['_target_']} is not a function")
        return functools.partial(fn, **kwargs) if kwargs else fn
    raise ValueError(
        f"activation {activation!r} is neither a name ({', '.join(sorted(ACTIVATIONS))}) "
        "nor {_target_: pkg.module.function}"
    )


def is_monotone(activation: Any) -> bool:
    """Whether ``activation`` is a name proven non-decreasing in float32 (:data:`MONOTONE`)."""
    return isinstance(activation, str) and activation in MONOTONE
