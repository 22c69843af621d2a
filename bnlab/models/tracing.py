"""What the network wrappers read off a model and its traced program: whether it
convolves, how it takes the train mode, and NNX state's keys as strings and back."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

TRAIN_KWARGS = ("train", "training")


def has_conv(jaxpr: Any) -> bool:
    """Whether a traced program (or any program inside it) convolves."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and has_conv(getattr(inner, "jaxpr", inner)):
                    return True
    return False


def call_kwarg(fn: Callable, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that ``fn`` takes as an argument, else None."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in names if k in params), None)


def train_kwarg(fn: Callable) -> str | None:
    """The argument by which ``fn`` takes the train/eval mode, if any."""
    return call_kwarg(fn, TRAIN_KWARGS)


def stringify(tree: Any) -> Any:
    """A nested dict with string keys (NNX state may have int keys)."""
    if isinstance(tree, dict):
        return {str(k): stringify(v) for k, v in tree.items()}
    return tree


def restore(tree: Any, template: Any) -> Any:
    """:func:`stringify` undone, the keys taken from ``template``."""
    if isinstance(template, dict):
        return {k: restore(tree[str(k)], v) for k, v in template.items()}
    return tree
