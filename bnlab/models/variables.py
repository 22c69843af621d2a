"""A model's state beyond parameters and batch statistics, as plain nested dicts.

The engine keeps every variable a model creates: linen collections other than
``params``/``batch_stats`` (a counter, a cache, a user collection) and NNX variables
other than ``nnx.Param``/``nnx.BatchStat`` (``RngKey``/``RngCount`` of stored
``nnx.Rngs`` streams, a ``Count``, ``nnx.Cache``...). They travel in
``TrainState.extra`` as string-keyed dicts of arrays, so members (``vmap``), devices,
Orbax checkpoints and ``jnp.where`` freezing treat them like any other state. Typed
PRNG keys are stored as their raw ``uint32`` data (Orbax does not save typed keys)
and wrapped again for the model. Sown intermediates (linen ``intermediates``/
``sites``, ``nnx.Intermediate``) are outputs of one call, never state: not carried,
so they do not pile up across steps.
"""

from __future__ import annotations

from typing import Any

import jax

SOWN = ("sites", "intermediates")  # linen collections that are per-call outputs


def is_key(leaf: Any) -> bool:
    """Whether ``leaf`` (an array or a ShapeDtypeStruct) is a typed PRNG key."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def raw(tree: Any) -> Any:
    """``tree`` as string-keyed dicts, typed PRNG keys as their raw data."""
    if isinstance(tree, dict):
        return {str(k): raw(v) for k, v in tree.items()}
    return jax.random.key_data(tree) if is_key(tree) else tree


def typed(tree: Any, template: Any) -> Any:
    """``tree`` (as :func:`raw` made it) in the key types and dict keys of ``template``
    (the model's own pure dict); leaves the template lacks are dropped."""
    if isinstance(template, dict):
        return {k: typed(tree[str(k)], v) for k, v in template.items()}
    return jax.random.wrap_key_data(tree) if is_key(template) else tree


def like(tree: Any, template: Any) -> Any:
    """``tree`` (string-keyed, from the model after a call) cut to ``template``'s
    structure: a variable created during a call (a sown value) is not state."""
    if isinstance(template, dict):
        return {str(k): like(tree[str(k)], v) for k, v in template.items()}
    return tree


def fold_keys(tree: Any, template: Any, shard: Any) -> Any:
    """``tree`` (raw) with every stored PRNG key (a typed key in ``template``) folded
    with ``shard``: under data parallelism each shard draws its own numbers from a
    stored stream (its ``RngCount`` still advances as on every other shard)."""
    if isinstance(template, dict):
        return {str(k): fold_keys(tree[str(k)], v, shard) for k, v in template.items()}
    if not is_key(template):
        return tree
    return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(tree), shard))


def keep_keys(tree: Any, before: Any, template: Any) -> Any:
    """``tree`` with the stored PRNG keys of ``before`` (the state carried on is the
    same on every shard; a call changes only the counts)."""
    if isinstance(template, dict):
        return {str(k): keep_keys(tree[str(k)], before[str(k)], v) for k, v in template.items()}
    return before if is_key(template) else tree
