"""Gradient-ICS and landscape probes (Santurkar et al. 2018), noisy BN and mean-only BN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer import QUICK, compose, engine_for

from bnlab import config, norm
from bnlab import measure as probe
from bnlab.engine import step
from bnlab.engine.step import unstack
from bnlab.errors import UserError


def trainer(features, norm_over=("norm=bn",), *, ics_every=0, steps=(0.5, 1.0, 2.0), chunk=20,
            every=10, seed=0, devices=(1, 1)):  # fmt: skip
    """An engine of the Fig. 1 MLP (``features`` wide) on digits, and one member's state."""
    over = [
        *QUICK, "data.probe_size=100", "batch_size=30", "steps=100", f"chunk_steps={chunk}",
        f"probe.every={every}", "probe.percentiles=[50]", "probe.units=[]",
        f"probe.ics_every={ics_every}", f"probe.landscape_steps=[{','.join(map(str, steps))}]",
        f"model.features=[{','.join(map(str, features))}]", f"seed={seed}", *norm_over,
    ]  # fmt: skip
    e, states, _ = engine_for(over, devices=devices)
    return e, states


def member(states):
    return unstack(states, 0)


# --------------------------------------------------------------------------- gradient ICS


def test_gradient_ics_zero_for_one_layer_model_and_first_layer():
    """No earlier layer moves: G' = G exactly (a one-layer model; layer 1 of a deeper one)."""
    for features, nrm in (((), "norm=none"), ((16, 8), "norm=bn")):
        tr, st = trainer(features, [nrm])
        x, y = tr.data["train_x"][:30], tr.data["train_y"][:30]
        out = jax.device_get(jax.jit(tr.learner.ics)(member(st), x, y))
        first = "layer1" if features else "head"
        assert out[first]["grad_diff_l2"] == 0.0
        np.testing.assert_allclose(out[first]["grad_cos"], 1.0, rtol=1e-6)
        if features:  # later layers do see the shift
            assert out["head"]["grad_diff_l2"] > 0 and out["layer2"]["grad_diff_l2"] > 0
        assert set(out["all"]) == {
            "loss_range", "grad_predictiveness", "beta_smoothness", "grad_l2",
            "loss_range_len", "grad_predictiveness_len", "beta_smoothness_len",
        }  # fmt: skip
        for layer, d in out.items():  # the relative change is the raw one over ||G||
            if layer != "all" and d["grad_diff_l2"] > 0:
                assert 0 < d["grad_diff_rel"] < d["grad_diff_l2"] * 1e6


def test_gradient_ics_two_layer_linear_closed_form():
    """f(x) = x K1 K2, L = ||X K1 K2 - Y||^2 / (2N), SGD step lr. With R = X K1 K2 - Y:
    G1 = X^T R K2^T / N, G2 = (X K1)^T R / N; after K1 -> K1 - lr G1 the input of layer 2
    moves by D = -lr X G1, and G2' - G2 = (D^T R + (X K1)^T D K2 + D^T D K2) / N."""
    rng = np.random.default_rng(0)
    n, d, h, o, lr = 20, 5, 4, 3, 0.3
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, o))
    K1, K2 = rng.normal(size=(d, h)) * 0.5, rng.normal(size=(h, o)) * 0.5

    R = X @ K1 @ K2 - Y
    G1, G2 = X.T @ R @ K2.T / n, (X @ K1).T @ R / n
    D = -lr * X @ G1
    dG2 = (D.T @ R + (X @ K1).T @ D @ K2 + D.T @ D @ K2) / n
    G2b = G2 + dG2
    want_l2 = np.linalg.norm(dG2)
    want_cos = np.sum(G2 * G2b) / (np.linalg.norm(G2) * np.linalg.norm(G2b))

    def loss_fn(p, batch):
        x, y = batch
        return 0.5 * jnp.mean(
            jnp.sum((x @ p["layer1"]["kernel"] @ p["head"]["kernel"] - y) ** 2, -1)
        )

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    params = {"layer1": {"kernel": f32(K1)}, "head": {"kernel": f32(K2)}}
    batch = (f32(X), f32(Y))
    grads = jax.grad(loss_fn)(params, batch)
    np.testing.assert_allclose(grads["layer1"]["kernel"], G1, rtol=1e-5, atol=1e-6)
    update = jax.tree.map(lambda g: -lr * g, grads)
    out = jax.device_get(probe.gradient_ics(loss_fn, params, batch, update, ["layer1", "head"]))
    assert out["layer1"]["grad_diff_l2"] == 0.0
    np.testing.assert_allclose(out["head"]["grad_diff_l2"], want_l2, rtol=1e-4)
    np.testing.assert_allclose(out["head"]["grad_cos"], want_cos, rtol=1e-5)


# --------------------------------------------------------------------------- landscape


def test_landscape_equals_python_loop():
    """On a tiny BN MLP: loss range, gradient predictiveness and beta-smoothness by hand."""
    tr, st = trainer((6, 5), steps=(0.25, 1.0, 4.0))
    st = member(st)
    x, y = tr.data["train_x"][:30], tr.data["train_y"][:30]

    def loss_fn(p, batch):
        return tr.learner.loss_fn(p, st.batch_stats, batch[0], batch[1])[0]

    lr = 0.5
    got = jax.device_get(probe.landscape(loss_fn, st.params, (x, y), lr, [0.25, 1.0, 4.0]))

    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)]).astype(np.float64)  # noqa: E731
    g0 = jax.grad(loss_fn)(st.params, (x, y))
    losses, dgs, ratios = [float(loss_fn(st.params, (x, y)))], [], []
    for c in (0.25, 1.0, 4.0):
        p = jax.tree.map(lambda a, g, c=c: a - c * lr * g, st.params, g0)
        loss, g = jax.value_and_grad(loss_fn)(p, (x, y))
        losses.append(float(loss))
        dg = np.linalg.norm(flat(g) - flat(g0))
        dgs.append(dg)
        ratios.append(dg / np.linalg.norm(c * lr * flat(g0)))
    np.testing.assert_allclose(got["loss_range"], max(losses) - min(losses), rtol=1e-4)
    np.testing.assert_allclose(got["grad_predictiveness"], max(dgs), rtol=1e-4)
    np.testing.assert_allclose(got["beta_smoothness"], max(ratios), rtol=1e-4)
    np.testing.assert_allclose(got["grad_l2"], np.linalg.norm(flat(g0)), rtol=1e-5)
    assert got["loss_range"] > 0
    # at equal step length: points l along -g/|g|, whatever the lr and |g|
    got = jax.device_get(probe.landscape(loss_fn, st.params, (x, y), lr, [1.0], [0.1, 0.3]))
    norm = np.linalg.norm(flat(g0))
    losses, dgs, ratios = [float(loss_fn(st.params, (x, y)))], [], []
    for length in (0.1, 0.3):
        p = jax.tree.map(lambda a, g, v=length: a - v * g / norm, st.params, g0)
        loss, g = jax.value_and_grad(loss_fn)(p, (x, y))
        losses.append(float(loss))
        dgs.append(np.linalg.norm(flat(g) - flat(g0)))
        ratios.append(dgs[-1] / length)
    np.testing.assert_allclose(got["loss_range_len"], max(losses) - min(losses), rtol=1e-4)
    np.testing.assert_allclose(got["grad_predictiveness_len"], max(dgs), rtol=1e-4)
    np.testing.assert_allclose(got["beta_smoothness_len"], max(ratios), rtol=1e-3)


@pytest.mark.parametrize("at", ["before", "after"])
def test_ics_is_measured_on_the_batch_the_paper_says(at):
    """``before``: at W(t) on the batch step t + 1 is about to use (Santurkar et al.);
    ``after``: on step t's own batch. Checked against the member's ICS at the state
    after 20 steps on that batch, drawn by the one batch rule."""
    from bnlab.engine.batches import batch_indices

    tr, st = trainer((8,), ics_every=20, chunk=20, every=10)
    tr_at, st_at = trainer((8,), ics_every=20, chunk=20, every=10)
    tr_at.ics_before = at == "before"
    tr_at.programs.clear()
    st, _ = tr.chunk(st, 0, 20)  # the state after 20 steps (ICS off in what we compare)
    _, out = tr_at.chunk(st_at, 0, 20)
    got = jax.device_get(out.ics)["head"]["grad_diff_l2"][0, -1]
    m = member(st)
    idx = batch_indices(m.key, 20 if at == "before" else 19, len(tr.data["train_y"]), 30)
    want = tr.learner.ics(m, tr.data["train_x"][idx], tr.data["train_y"][idx])
    np.testing.assert_allclose(got, want["head"]["grad_diff_l2"], rtol=1e-5)


def test_ics_in_the_compiled_chunk_only_when_due():
    tr, st = trainer((8,), ics_every=20, chunk=40, every=10)
    st, out = tr.chunk(st, 0, 40)
    out = jax.device_get(out)
    np.testing.assert_array_equal(out.step, [10, 20, 30, 40])
    np.testing.assert_array_equal(out.ics_due, [False, True, False, True])
    assert (out.ics["head"]["grad_diff_l2"][0, [1, 3]] > 0).all()
    assert (out.ics["head"]["grad_diff_l2"][0, [0, 2]] == 0).all()
    tr_off, st_off = trainer((8,))
    assert jax.device_get(tr_off.chunk(st_off, 0, 20)[1]).ics is None
    with pytest.raises(UserError, match="ics_every"):
        config.check(config.typed(compose([*QUICK, "probe.ics_every=15"])), 1)


# --------------------------------------------------------------------------- noisy BN


def test_inject_noise_zero_magnitudes_is_identity():
    y = jax.random.normal(jax.random.PRNGKey(0), (7, 4, 4, 3))
    out = norm.inject_noise(y, jax.random.PRNGKey(1), noise_mean=0.0, noise_std=0.0)
    np.testing.assert_array_equal(out, y)


def test_noisy_bn_zero_noise_equals_bn():
    """A whole chunk of training with norm=bn_noisy at zero magnitudes equals norm=bn."""
    runs = []
    for nrm in (["norm=bn"], ["norm=bn_noisy", "norm.noise_mean=0", "norm.noise_std=0"]):
        tr, st = trainer((8, 8), nrm)
        runs.append(jax.device_get(tr.chunk(st, 0, 20)))
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_noisy_bn_noise_moves_every_step_and_is_reproducible():
    key = jax.random.PRNGKey(0)
    per_step = [
        jax.device_get(norm.noise_params(step.noise_key(key, t), (5,), 0.5, 0.5)) for t in range(3)
    ]
    again = jax.device_get(norm.noise_params(step.noise_key(key, 1), (5,), 0.5, 0.5))
    for a, b in zip(per_step[1], again, strict=True):
        np.testing.assert_array_equal(a, b)  # a function of the key and the step only
    for t in (1, 2):
        for a, b in zip(per_step[t - 1], per_step[t], strict=True):
            assert not np.allclose(a, b)  # redrawn every step
    mu_s, sd_s, mu_a, sd_a = per_step[0]
    assert ((0.5 <= mu_s) & (mu_s <= 1.5)).all() and ((-0.5 <= mu_a) & (mu_a <= 0.5)).all()
    assert ((0 <= sd_s) & (sd_s <= 0.5)).all() and ((0 <= sd_a) & (sd_a <= 0.5)).all()

    # training: the same seed gives the same run, another seed another; noise changes BN's run
    noisy = ["norm=bn_noisy", "norm.noise_mean=0.5", "norm.noise_std=0.5"]
    outs = {}
    for name, nrm, seed in (
        ("a", noisy, 0),
        ("b", noisy, 0),
        ("c", noisy, 1),
        ("bn", ["norm=bn"], 0),
    ):
        tr, st = trainer((8,), nrm, seed=seed)
        st, out = tr.chunk(st, 0, 20)
        outs[name] = jax.device_get((st.params, out.loss))
    same = lambda u, v: all(  # noqa: E731
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True)
    )
    assert same(outs["a"], outs["b"])
    assert not same(outs["a"], outs["c"]) and not same(outs["a"], outs["bn"])


def test_noisy_bn_needs_its_key_in_train_mode_only():
    bn = norm.BatchNorm(noise_mean=0.5, noise_std=0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    v = bn.init(jax.random.PRNGKey(1), x, use_running_average=False)
    with pytest.raises(ValueError, match="rngs"):
        bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    y_eval = bn.apply(v, x, use_running_average=True)  # eval: no noise, no key needed
    np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-5), rtol=1e-6)
    y1, _ = bn.apply(
        v,
        x,
        use_running_average=False,
        mutable=["batch_stats"],
        rngs={"noise": jax.random.PRNGKey(2)},
    )
    y0, _ = norm.BatchNorm().apply(v, x, use_running_average=False, mutable=["batch_stats"])
    assert not np.allclose(y1, y0)


# --------------------------------------------------------------------------- mean-only BN


def test_center_only_subtracts_the_mean_and_keeps_the_scale():
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (64, 5)) + 2.0
    y, _, _ = norm.batch_norm(
        x, None, None, jnp.zeros(5), jnp.ones(5), use_running_average=False, center_only=True
    )
    np.testing.assert_allclose(y, x - x.mean(0), rtol=1e-5, atol=1e-5)


PARALLEL_SCRIPT = """
import jax, numpy as np
import test_ics as t
outs = []
for devices in (1, 2):
    tr, st = t.trainer([8, 8], ["norm=bn", "norm.sync=true"], ics_every=10, steps=(0.5, 2.0),
                       devices=(devices, 1))
    outs.append(jax.device_get(tr.chunk(st, 0, 20)[1].ics))
errs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))), *outs)
print("MAXREL", max(jax.tree.leaves(errs)))
"""


def test_ics_on_two_devices_equals_one():
    """Under parallel.data=2 (shard_map) the probes see the global batch: same numbers."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {
        **os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
    }  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", PARALLEL_SCRIPT], cwd=here.parent, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    maxrel = float(res.stdout.split("MAXREL")[-1])
    assert maxrel < 1e-4, maxrel
