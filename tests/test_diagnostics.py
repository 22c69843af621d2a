"""The diagnostics probes: sharpness (against a dense Hessian), dead units and the
effective learning rate (on hand-made values), the scale-invariant layers found in
built-in and own models, and a short run whose tables hold them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from trainer import QUICK, compose, engine_for, tables, train

from bnlab import config
from bnlab.engine.diagnostics import fixed_batches, member_sharpness, scale_invariant_layers
from bnlab.engine.step import unstack
from bnlab.measure import (
    activation_stats,
    dead_fraction,
    effective_lr,
    hvp,
    module_stats,
    top_eigenvalue,
)


def dense_top(loss, params, batches) -> tuple[float, np.ndarray]:
    """The eigenvalue of largest magnitude of the dense Hessian (``jax.hessian``) of the
    mean of ``loss`` over ``batches``, and the Hessian."""
    flat, unravel = ravel_pytree(params)
    n = jax.tree.leaves(batches)[0].shape[0]

    def mean_loss(f):
        p = unravel(f)
        return sum(loss(p, jax.tree.map(lambda a, i=i: a[i], batches)) for i in range(n)) / n

    h = np.asarray(jax.jit(jax.hessian(mean_loss))(flat), np.float64)
    eig = np.linalg.eigvalsh((h + h.T) / 2)
    return float(eig[np.argmax(np.abs(eig))]), h


# --------------------------------------------------------------------------- sharpness


def test_top_eigenvalue_equals_the_dense_hessians():
    """A two-layer tanh net with a squared loss over 3 batches: H v and the power
    iteration's eigenvalue against ``jax.hessian`` of the same mean loss."""
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
                    "bias": jnp.zeros(4)},
              "b": {"kernel": jnp.asarray(rng.normal(size=(4, 2)) * 0.5, jnp.float32)}}  # fmt: skip
    xs = jnp.asarray(rng.normal(size=(3, 8, 5)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(3, 8, 2)), jnp.float32)

    def loss(p, batch):
        x, y = batch
        out = jnp.tanh(x @ p["a"]["kernel"] + p["a"]["bias"]) @ p["b"]["kernel"]
        return jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

    top, h = dense_top(loss, params, (xs, ys))
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    for unroll in (False, True):
        got = ravel_pytree(hvp(loss, params, (xs, ys), v, unroll))[0]
        np.testing.assert_allclose(got, h @ np.asarray(ravel_pytree(v)[0]), rtol=1e-4, atol=1e-5)
    top_jit = jax.jit(top_eigenvalue, static_argnums=(0, 4))
    lam = top_jit(loss, params, (xs, ys), jax.random.key(1), 300)
    np.testing.assert_allclose(float(lam), top, rtol=1e-4)
    assert top > 0


def test_the_engines_sharpness_is_the_dense_hessians_for_every_member(tmp_path):
    """The chunk's sharpness of each member of a 2-lr sweep (BN in train mode over each of
    the fixed batches) equals the top eigenvalue of the dense Hessian of the same loss
    at that member's state."""
    over = [*QUICK, "model.features=[4]", "norm=bn", "model.activation=relu",
            "batch_size=20", "steps=20", "chunk_steps=20", "probe.every=10",
            "probe.sharpness_every=20", "probe.sharpness_batches=3",
            "probe.sharpness_iters=300", "sweep.lr=[0.1,1.0]"]  # fmt: skip
    e, states, _ = engine_for(over)
    states, metrics = e.chunk(states, 0, 20)
    metrics = jax.device_get(metrics)
    np.testing.assert_array_equal(metrics.sharpness_due, [False, True])
    assert (metrics.sharpness[:, 0] == 0).all()  # not due at step 10
    idx = fixed_batches(e.n_train, 3, 20)
    assert len(np.unique(idx)) == 60 and idx.max() >= 1400  # spread over the 1,500
    xs, ys = e.data["train_x"][idx], e.data["train_y"][idx]
    for m in range(2):
        st = unstack(states, m)
        assert int(st.step) == 20
        rngs = e.learner.rngs(st)

        def loss(params, batch, st=st, rngs=rngs):
            return e.learner.loss_fn(params, st.batch_stats, *batch, rngs, st.extra)[0]

        top, _ = dense_top(loss, st.params, (xs, ys))
        np.testing.assert_allclose(metrics.sharpness[m, 1], top, rtol=2e-3)
        one = jax.jit(member_sharpness, static_argnums=(0, 4))(e.learner, st, xs, ys, 300)
        np.testing.assert_allclose(one, metrics.sharpness[m, 1], rtol=1e-4)


# --------------------------------------------------------------------------- dead units


def test_dead_fraction_on_hand_made_sites():
    """A unit is dead when it is exactly 0 for every example (and position)."""
    h = np.abs(np.random.default_rng(0).normal(size=(30, 5))).astype(np.float32)
    h[:, 1] = 0.0  # dead
    h[:, 3] = 0.0
    h[7, 3] = 1e-30  # alive on one example
    conv = np.ones((6, 4, 4, 8), np.float32)
    conv[..., [0, 2, 5]] = 0.0  # three dead feature maps
    conv[2, 3, 1, 5] = -1.0  # ... but one of them is negative once
    assert float(dead_fraction(jnp.asarray(h))) == pytest.approx(1 / 5)
    assert float(dead_fraction(jnp.asarray(conv))) == pytest.approx(2 / 8)
    assert float(dead_fraction(jnp.zeros(10))) == 1.0  # one unit, zero throughout
    sites = {"a/post": jnp.asarray(h), "b/in": jnp.asarray(conv), "a/pre": jnp.asarray(h)}
    got = jax.device_get(activation_stats(sites, [50], [], dead=("a/post", "b/in")))
    assert got["a/post"]["dead_fraction"] == pytest.approx(0.2)
    assert got["b/in"]["dead_fraction"] == pytest.approx(0.25)
    assert "dead_fraction" not in got["a/pre"]


# --------------------------------------------------------------------------- effective lr


def test_effective_lr_on_hand_made_weights():
    """lr / ||W||^2 of the whole kernel, only for the layers named; NaN for a zero W."""
    w = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # ||w||^2 = 25
    params = {"conv": {"kernel": w, "bias": jnp.ones(2)}, "head": {"kernel": 2 * w},
              "dead": {"kernel": jnp.zeros((2, 2))}}  # fmt: skip
    stats = module_stats(params, jax.tree.map(jnp.zeros_like, params), {})
    got = effective_lr(stats, ["conv", "dead", "missing"], jnp.float32(0.5))
    np.testing.assert_allclose(got["conv"]["effective_lr"], 0.5 / 25, rtol=1e-6)
    assert np.isnan(got["dead"]["effective_lr"])
    assert "effective_lr" not in got["head"] and "missing" not in got
    assert "effective_lr" not in stats["conv"]  # the input is not changed


def layers_of(overrides: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """The scale-invariant layers (as layer statistics name them) and the activation
    outputs of a model, found by tracing it on an abstract digits batch."""
    from bnlab.models import build_networks

    cfg = config.typed(compose([*QUICK, *overrides]))
    flat = "data.flatten=false" not in overrides
    x = jax.ShapeDtypeStruct((20, 64) if flat else (20, 8, 8, 1), jnp.float32)
    net, probe_net = build_networks(cfg, 10, x, 1, "data")
    params = jax.eval_shape(lambda k: net.init(k, jnp.zeros(x.shape, x.dtype))[0],
                            jax.random.key(0))  # fmt: skip
    return scale_invariant_layers(net, params), probe_net.layout.activation_outputs


@pytest.mark.parametrize(("overrides", "invariant", "outputs"), [
    (["norm=bn", "model.features=[8,8]"], ["layer1", "layer2"], ("layer1/post", "layer2/post")),
    (["norm=none", "model.features=[8]"], [], ("layer1/post",)),
    (["norm=bn_nostatgrad_meanonly", "model.features=[8]"], [], ("layer1/post",)),  # x - E[x]
    (["norm=bn", "model.features=[8]", "model.norm_position=after"], [], ("layer1/prenorm",)),
    (["model=own", "model._target_=my_nets.Net", "+model.din=64", "+model.width=8",
      "import_path=[examples]"], ["fc1", "fc2"], ("fc2/in", "head/in")),
    (["model=own", "model._target_=real_models.CallRngsCNN", "import_path=[tests]",
      "data.flatten=false"], ["conv1", "conv2"], ("conv2/in", "linear1/in", "linear2/in")),
    (["model=own", "model._target_=real_models.LinenDropoutCNN", "import_path=[tests]",
      "data.flatten=false"], ["Conv_0"], ("Dense_0/in", "Dense_1/in")),
], ids=["mlp-bn", "mlp-none", "mlp-meanonly", "mlp-bn-after", "nnx-own", "nnx-dropout-between",
        "linen-cnn"])  # fmt: skip
def test_scale_invariant_layers_and_activation_outputs(overrides, invariant, outputs):
    """A layer is scale-invariant where its output goes straight (dropout aside) into a
    normalizer that divides by a statistic of its input; dead units are measured at the
    sites an activation produces."""
    got, acts = layers_of(overrides)
    assert got == invariant
    assert acts == outputs


# --------------------------------------------------------------------------- a short run


def test_a_short_sweep_records_the_diagnostics(tmp_path):
    """Both members of a 2-lr sweep of a ReLU MLP with BN record ``sharpness`` and
    ``two_over_lr`` every ``probe.sharpness_every`` steps, ``effective_lr`` of every
    hidden layer (lr / weight_norm^2; not the head) and ``dead_fraction`` at ``post``."""
    over = [*QUICK, "norm=bn", "model.activation=relu", "model.features=[16,16]",
            "steps=100", "probe.sharpness_every=50", "probe.sharpness_iters=5",
            "sweep.lr=[0.1,1.0]"]  # fmt: skip
    summaries = train(over, tmp_path)
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    for member, lr in (("0", 0.1), ("1", 1.0)):
        t = tables(tmp_path / member)
        sc = t["scalars.parquet"].pivot_table(index="step", columns="name", values="value")
        sharp = sc["sharpness"].dropna()
        assert list(sharp.index) == [50, 100] and (sharp > 0).all()
        np.testing.assert_allclose(sc["two_over_lr"].dropna(), 2 / lr, rtol=1e-6)
        layers = t["layers.parquet"].pivot_table(index=["step", "layer"], columns="stat",
                                                 values="value")  # fmt: skip
        eff = layers["effective_lr"].dropna()
        assert set(eff.index.get_level_values("layer")) == {"layer1", "layer2"}
        assert sorted(set(eff.index.get_level_values("step"))) == [0, 50, 100]
        wn = layers.loc[eff.index, "weight_norm"]
        np.testing.assert_allclose(eff, lr / wn**2, rtol=1e-5)
        acts = t["activations.parquet"]
        dead = acts[acts["stat"] == "dead_fraction"]
        assert set(dead["site"]) == {"post"} and set(dead["unit"]) == {-1}
        assert len(dead) == 2 * 3 and dead["value"].between(0, 1).all()
    # read back and drawn as the README says
    import matplotlib.pyplot as plt

    from bnlab.analysis import plot
    from bnlab.analysis.runs import load_sweep

    sweep = load_sweep(tmp_path)
    for fig in (plot.learning_curves(sweep.scalars, metrics=("sharpness", "two_over_lr")),
                plot.layer_curves(sweep.layers, ["effective_lr"])):  # fmt: skip
        assert len(fig.axes[0].lines) >= 2  # a line per member
        plt.close(fig)
