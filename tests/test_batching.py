"""Tests for the on-device batch indices (moved from the data layer into the engine).

`epoch_permutation(key, epoch, n)` orders an epoch; `batch_indices(key, step, n,
batch_size)` takes step's slice of it, without replacement within an epoch, under
jit and lax.scan too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# isort: split
# (ruff would otherwise file this import as third-party)
from trainer import QUICK, engine_for

from bnlab.engine.batches import batch_indices, epoch_permutation


def test_epoch_covers_every_index_once():
    key = jax.random.key(0)
    for epoch in range(2):
        steps = range(epoch * 10, (epoch + 1) * 10)
        idx = np.concatenate([np.asarray(batch_indices(key, s, 100, 10)) for s in steps])
        np.testing.assert_array_equal(np.sort(idx), np.arange(100))
        np.testing.assert_array_equal(idx, epoch_permutation(key, epoch, 100))
    e0 = [np.asarray(batch_indices(key, s, 100, 10)) for s in range(10)]
    e1 = [np.asarray(batch_indices(key, s, 100, 10)) for s in range(10, 20)]
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))


def test_partial_last_batch_is_dropped():
    key = jax.random.key(1)
    idx = np.concatenate([np.asarray(batch_indices(key, s, 103, 10)) for s in range(10)])
    assert len(np.unique(idx)) == 100
    np.testing.assert_array_equal(idx, np.asarray(epoch_permutation(key, 0, 103))[:100])
    np.testing.assert_array_equal(  # step 10 starts epoch 1
        batch_indices(key, 10, 103, 10), epoch_permutation(key, 1, 103)[:10]
    )


def test_keys_decide_the_order():
    k0, k1 = jax.random.key(0), jax.random.key(1)
    same = batch_indices(k0, 3, 1000, 32), batch_indices(k0, 3, 1000, 32)
    np.testing.assert_array_equal(*same)
    assert not np.array_equal(batch_indices(k1, 3, 1000, 32), same[0])
    raw_key = jax.random.PRNGKey(0)  # legacy uint32 keys work too
    assert batch_indices(raw_key, 0, 50, 5).shape == (5,)


def test_batch_indices_under_jit_and_scan():
    key = jax.random.key(2)
    jitted = jax.jit(batch_indices, static_argnums=(2, 3))
    for step in (0, 7, 13, 25):
        np.testing.assert_array_equal(
            jitted(key, jnp.int32(step), 60, 8), batch_indices(key, step, 60, 8)
        )

    @jax.jit
    def all_batches(key):
        def body(carry, step):
            return carry, batch_indices(key, step, 60, 8)

        return jax.lax.scan(body, None, jnp.arange(14))[1]

    got = np.asarray(all_batches(key))
    assert got.shape == (14, 8) and got.dtype == np.int32
    for step in range(14):
        np.testing.assert_array_equal(got[step], batch_indices(key, step, 60, 8))
    assert len(np.unique(got[:7])) == 56  # 60 // 8 = 7 steps per epoch, no repeats


def test_batch_larger_than_data_is_an_error():
    from bnlab.errors import UserError  # here, so the import order holds before and after the move

    with pytest.raises(UserError, match="batch_size=11"):  # a DataError or any UserError
        batch_indices(jax.random.key(0), 0, 10, 11)


def test_a_chunk_draws_from_its_own_members_epochs():
    """The engine computes each epoch's order once and keeps it (``bnlab.engine.epochs``)
    from the first members' keys; states with other seeds get their own orders (the chunk
    computes them itself): the same losses as a fresh engine's, whatever came before."""
    over = [*QUICK, "model.features=[16]", "steps=60", "chunk_steps=60", "probe.every=20",
            "batch_size=50"]  # fmt: skip
    e, first, _ = engine_for(over)
    assert e.steps_per_epoch < 60  # the chunk spans several epochs
    other = e.init([7], [0.5], e.data["train_x"][:2])
    e.chunk(first, 0, 60)  # the orders of seed 0's epochs are kept
    _, after_seed0 = e.chunk(other, 0, 60)
    fresh, _, _ = engine_for(over)
    _, alone = fresh.chunk(fresh.init([7], [0.5], fresh.data["train_x"][:2]), 0, 60)
    np.testing.assert_array_equal(jax.device_get(after_seed0.loss), jax.device_get(alone.loss))
    assert sorted(fresh.orders.cache) == list(range(fresh._count(60) + 1))  # one ahead
