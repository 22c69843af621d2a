"""Models as Flax's examples write them (tests/real_models.py), trained unmodified
through ``model._target_``: dropout in both APIs and both NNX rngs idioms, a custom
variable carried and checkpointed, partials and factory functions; one-line errors."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from trainer import COMPILE_CACHE, QUICK, ROOT, as_if_killed, cli, engine_for, tables, train

from bnlab.engine.step import unstack
from bnlab.record import tables as record
from bnlab.record.checkpoint import Checkpoints

TESTS = ROOT / "tests"
OWN = ["model=own", f"import_path=[{TESTS}]", "batch_size=32", "data.probe_size=64"]
CNNS = ["real_models.StoredRngsCNN", "real_models.CallRngsCNN", "real_models.LinenDropoutCNN"]
RUN = ["steps=100", "chunk_steps=50", "eval_every=50", "checkpoint_every=50", "probe.every=50"]


@pytest.fixture(scope="module", autouse=True)
def _compile_cache():
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _cnn(target: str) -> list[str]:
    return [*QUICK, *OWN, f"model._target_={target}", "data.flatten=false"]


@pytest.mark.parametrize("target", CNNS, ids=["nnx-stored-rngs", "nnx-call-rngs", "linen"])
def test_dropout_masks_follow_step_and_seed_and_evaluation_is_deterministic(target):
    """Train-mode outputs differ from one step to the next and between two members of
    a sweep (two seeds) at the same parameters; with dropout off (evaluation, probes)
    they are equal, and evaluation at two steps gives the same numbers."""
    e, states, _ = engine_for([*_cnn(target), "sweep.seeds=2"])
    lrn = e.learner
    s0, s1 = unstack(states, 0), unstack(states, 1)
    s1 = s1.replace(params=s0.params, batch_stats=s0.batch_stats)  # same weights, own streams
    x = jnp.asarray(e.data["train_x"][:32])

    @partial(jax.jit, static_argnums=1)
    def out(st, dropout):
        logits, _, extra, _ = lrn.net.apply_state(st.params, st.batch_stats, x, train=True,
                                                  extra=st.extra, dropout=dropout,
                                                  **lrn.rngs(st))  # fmt: skip
        return logits, extra

    a, extra = out(s0, True)
    nxt = s0.replace(step=s0.step + 1, extra=extra)  # the next step's keys and streams
    b, _ = out(nxt, True)
    c, _ = out(s1, True)
    assert not np.allclose(a, b) and not np.allclose(a, c)
    np.testing.assert_array_equal(out(s0, False)[0], out(nxt, False)[0])
    np.testing.assert_array_equal(out(s0, False)[0], out(s1, False)[0])
    ev = jax.jit(lrn.evaluate_one)
    tx, ty = e.data["test_x"], e.data["test_y"]
    np.testing.assert_array_equal(ev(s0, tx, ty), ev(nxt, tx, ty))


@pytest.mark.parametrize("target", CNNS, ids=["nnx-stored-rngs", "nnx-call-rngs", "linen"])
def test_dropout_model_trains_and_resumes_exactly(tmp_path, target, record_property):
    """100 steps of a 2-seed sweep; as if killed after the checkpoint at step 50, the
    resumed run's tables equal the uninterrupted run's (the masks drawn after the
    resume are the uninterrupted run's: NNX's stored streams are restored, linen's
    keys derive from the seed and the step)."""
    over = [*_cnn(target), *RUN, "sweep.seeds=2", "optimizer=momentum", "optimizer.lr=0.05"]
    train(over, tmp_path)
    full = {i: tables(tmp_path / str(i)) for i in range(2)}
    acc = full[0]["scalars.parquet"].query("name == 'test_accuracy'").set_index("step")["value"]
    record_property("summary", f"{target}, 100 steps: test accuracy {acc[100]:.3f}")
    assert acc[100] > 0.5
    for i in range(2):
        as_if_killed(tmp_path / str(i), drop_checkpoint=100)
    train(over, tmp_path)
    for i in range(2):
        again = tables(tmp_path / str(i))
        for name in full[i]:
            pd.testing.assert_frame_equal(again[name], full[i][name])


def test_the_default_sites_finding_none_is_one_warning_line(capsys):
    engine_for([*QUICK, *OWN, "model._target_=real_models.CountMLP", "+model.din=64", "norm=none"],
               probes=False)  # fmt: skip
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert warn == [
        "bnlab: warning: the default probe.sites finds no site in model._target_=real_models."
        "CountMLP: choose module outputs with probe.sites=[...], e.g. linear1/out, "
        "linear2/out, model/out"
    ]


def test_a_counter_is_carried_checkpointed_and_restored(tmp_path):
    """The toy MLP's ``Count`` variable (custom ``Linear`` on ``w``/``b``) equals the
    step after training and in each checkpoint; restored from step 50 and trained 50
    more steps, it is 100 again, and so are the parameters of the uninterrupted run.
    ``w`` and ``b`` have weight and gradient norms and update ratios; ``probe.sites=[linear*/out]`` records
    the custom layers' outputs."""
    over = [*QUICK, *OWN, "model._target_=real_models.CountMLP", "+model.din=64", *RUN,
            "probe.sites=[linear*/out]"]  # fmt: skip
    (summary,) = train(over, tmp_path)
    assert summary["status"] == "finished"
    t = tables(tmp_path)
    acts, layers = t["activations.parquet"], t["layers.parquet"]
    assert set(acts["layer"] + "/" + acts["site"]) == {"linear1/out", "linear2/out"}
    assert set(acts["step"]) == {0, 50, 100}
    for leaf in ("linear1/w", "linear1/b", "linear2/w", "linear2/b"):
        rows = layers[layers["layer"] == leaf].set_index(["step", "stat"])["value"]
        assert rows[(100, "weight_norm")] > 0 and rows[(100, "grad_norm")] > 0, leaf
        assert rows[(100, "update_ratio")] > 0, leaf
    e, states, _ = engine_for(over, probes=False)
    like = unstack(states, 0)
    ck = Checkpoints(tmp_path / record.CHECKPOINTS)
    at100, at50 = ck.restore(like, 100), ck.restore(like, 50)
    ck.close()
    assert int(at100.extra["count"]) == 100 and int(at50.extra["count"]) == 50
    resumed, _ = e.chunk(jax.tree.map(lambda a: a[None], at50), 50, 50)
    resumed = unstack(resumed, 0)
    assert int(resumed.extra["count"]) == 100
    jax.tree.map(np.testing.assert_array_equal, resumed.params, at100.params)


@pytest.mark.parametrize(
    ("target", "extra"),
    [
        ("real_models.ResNetTiny", ["data.flatten=false", "+model.num_filters=4"]),
        ("real_models.make_mlp", ["+model.width=32"]),
        ("real_models.make_count_mlp", ["+model.din=64"]),
    ],
    ids=["partial", "linen-factory", "nnx-factory"],
)
def test_partials_and_factory_functions_train(tmp_path, target, extra):
    """``model._target_`` names a ``functools.partial`` of a module class (flax
    examples' ``ResNet18``) or a function returning a linen or NNX module."""
    over = [*QUICK, *OWN, f"model._target_={target}", *extra, "steps=100",
            "chunk_steps=100", "eval_every=100", "checkpoint_every=100", "probe.every=100",
            "optimizer=momentum", "optimizer.lr=0.05"]  # fmt: skip
    (summary,) = train(over, tmp_path)
    acc = tables(tmp_path)["scalars.parquet"].query("name == 'test_accuracy'")
    assert summary["status"] == "finished", summary
    assert acc["value"].iloc[-1] > 0.3 > acc["value"].iloc[0], acc  # 10 classes


def test_a_dropout_rate_outside_0_1_is_one_line(tmp_path):
    res = cli([*_cnn("real_models.StoredRngsCNN"), "+model.rate=1.0",
               f"hydra.run.dir={tmp_path / 'run'}"], timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == ("bnlab: error: model._target_=real_models.StoredRngsCNN: the dropout layer "
                    "dropout1 has rate 1.0; a dropout rate must lie in [0, 1)")  # fmt: skip
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("momentum", ["null", "0.99"])
def test_norm_momentum_overrides_a_hard_coded_batchnorm(momentum):
    """``nn.BatchNorm(momentum=0.9)`` hard-coded: unset, the model's 0.9 stands; with
    ``norm.momentum=0.99`` one training step moves the running mean by 1% of the batch
    mean (by hand from the layer's input), and the layer statistics record 0.99."""
    over = [*QUICK, *OWN, "model._target_=own_models.FlaxBNMLP", f"norm.momentum={momentum}"]
    e, states, _ = engine_for(over, probes=False)
    want = 0.9 if momentum == "null" else 0.99
    st = unstack(states, 0)
    x = jnp.asarray(e.data["train_x"][:32])
    net = e.learner.probe_net
    net.select(("BatchNorm_0/in",))
    _, new_bs, sites = net.apply(st.params, st.batch_stats, x, train=True, capture=True)
    h = np.asarray(sites["BatchNorm_0/in"], np.float64)
    np.testing.assert_allclose(new_bs["BatchNorm_0"]["mean"], (1 - want) * h.mean(0),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    stats = e.learner.layer_stats(st, jax.tree.map(jnp.zeros_like, st.params))
    assert float(stats["BatchNorm_1"]["bn_momentum"]) == pytest.approx(want)
    assert float(stats["BatchNorm_0"]["bn_epsilon"]) == pytest.approx(1e-5)


# --------------------------------------------------------------------------- optimizers and losses

MLP = [*QUICK, "model.features=[32]", "batch_size=32", "data.probe_size=64"]


def test_optax_adamw_equals_a_hand_written_loop():
    """``optimizer=optax optimizer._target_=optax.adamw`` with weight decay: 50 training
    steps equal 50 steps of a plain optax loop on the same model and batches (without
    BN: the bias before a BN has a gradient of 0 up to rounding, which Adam's division
    by sqrt(v) blows up to +-lr either way)."""
    import optax

    over = [*MLP, "norm=none", "optimizer=optax", "optimizer._target_=optax.adamw", "optimizer.lr=0.003",
            "+optimizer.args.weight_decay=0.1"]  # fmt: skip
    e, states, _ = engine_for(over, probes=False)
    lrn, st = e.learner, unstack(states, 0)
    xs = jnp.asarray(e.data["train_x"][: 50 * 16]).reshape((50, 16, -1))
    ys = jnp.asarray(e.data["train_y"][: 50 * 16]).reshape((50, 16))
    step = jax.jit(lambda s, x, y: lrn.train_step(s, x, y)[0])
    got = st
    for i in range(50):
        got = step(got, xs[i], ys[i])

    tx = optax.adamw(0.003, weight_decay=0.1)

    def loss(p, bs, x, y):
        logits, new_bs = lrn.net.apply(p, bs, x, train=True)[:2]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_bs

    @jax.jit
    def plain(p, bs, opt, x, y):
        (_, bs), g = jax.value_and_grad(loss, has_aux=True)(p, bs, x, y)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), bs, opt

    p, bs, opt = st.params, st.batch_stats, tx.init(st.params)
    for i in range(50):
        p, bs, opt = plain(p, bs, opt, xs[i], ys[i])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 got.params, p)  # fmt: skip


def test_a_clipped_chain_runs_in_a_vectorized_lr_sweep(tmp_path):
    """A user's ``optax.chain`` (gradient clipping, adam) by ``optimizer._target_``,
    two learning rates trained in one program: each member records its own lr."""
    over = [*MLP, *OWN[1:2], "optimizer=optax", "optimizer._target_=real_models.clipped_adam",
            "+optimizer.args.max_norm=0.5", "sweep.lr=[0.001,0.01]", *RUN]  # fmt: skip
    summaries = train(over, tmp_path)
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    for i, lr in enumerate([0.001, 0.01]):
        sc = tables(tmp_path / str(i))["scalars.parquet"]
        assert set(sc.query("name == 'lr'")["value"].round(9)) == {lr}
        assert sc.query("name == 'test_accuracy'")["value"].iloc[-1] > 0.5


@pytest.mark.parametrize(
    ("over", "want"),
    [
        (
            ["loss.label_smoothing=0.1"],
            lambda o, y: -(np.log(_softmax(o)) * (0.9 * _hot(y) + 0.01)).sum(1),
        ),
        (
            ["loss=sigmoid_binary_cross_entropy"],
            lambda o, y: -(_hot(y) * np.log(_sig(o)) + (1 - _hot(y)) * np.log(1 - _sig(o))).mean(1),
        ),
        (["loss=mean_squared_error"], lambda o, y: ((o - _hot(y)) ** 2).mean(1)),
        (
            ["loss=own", "loss._target_=real_models.hinge"],
            lambda o, y: np.maximum(
                0, 1 + np.where(_hot(y) > 0, -np.inf, o).max(1) - o[np.arange(len(y)), y]
            ),
        ),
    ],
    ids=["label-smoothing", "sigmoid-bce", "mse", "own"],
)
def test_losses_equal_their_formulas(over, want):
    e, states, _ = engine_for([*MLP, *OWN[1:2], *over], probes=False)
    st = unstack(states, 0)
    x, y = jnp.asarray(e.data["train_x"][:32]), np.asarray(e.data["train_y"][:32])
    got = float(e.learner.loss_fn(st.params, st.batch_stats, x, y)[0])
    o = np.asarray(e.learner.net.apply(st.params, st.batch_stats, x, train=True)[0], np.float64)
    assert got == pytest.approx(want(o, y).mean(), rel=1e-5)


def _hot(y):
    return np.eye(10)[y]


def _softmax(o):
    z = np.exp(o - o.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _sig(o):
    return 1 / (1 + np.exp(-o))


def test_a_user_loss_trains(tmp_path):
    over = [*MLP, *OWN[1:2], "loss=own", "loss._target_=real_models.hinge", *RUN]
    (s,) = train(over, tmp_path)
    acc = tables(tmp_path)["scalars.parquet"].query("name == 'test_accuracy'")["value"]
    assert s["status"] == "finished" and acc.iloc[-1] > 0.5


@pytest.mark.parametrize("columns", [None, 2], ids=["targets-n", "targets-n-k"])
def test_a_regression_task_trains_with_mse(tmp_path, columns, record_property):
    """Float targets from an .npz (y = a linear map of x plus noise): ``loss=mse``
    compares the model's K outputs to them; the test loss falls well below that of
    predicting the mean, and no accuracy is recorded."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 8)).astype(np.float32)
    w = rng.normal(size=(8, columns or 1)).astype(np.float32)
    y = x @ w + 0.1 * rng.normal(size=(700, columns or 1)).astype(np.float32)
    y = y if columns else y[:, 0]
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    quick = [o for o in QUICK if o != "data=digits"]
    over = [*quick, "data=arrays", f"data.path={path}", "loss=mean_squared_error",
            "model.features=[32]", "optimizer.lr=0.1", "steps=200", "probe.every=100",
            "eval_every=200", "batch_size=50"]  # fmt: skip
    (s,) = train(over, tmp_path / "run")
    assert s["status"] == "finished"
    sc = tables(tmp_path / "run")["scalars.parquet"]
    assert not sc["name"].str.endswith("accuracy").any()
    test_loss = sc.query("name == 'test_loss'").set_index("step")["value"]
    mean_loss = float(((y[500:] - y[:500].mean(0)) ** 2).mean())
    record_property("mse_vs_mean", f"{test_loss[200]:.4f} vs {mean_loss:.4f}")
    assert test_loss[200] < 0.2 * mean_loss and test_loss[0] > 0.5 * mean_loss
    from bnlab.analysis import plot

    fig = plot.learning_curves(sc.assign(label="mse"))  # test loss in accuracy's place
    assert [ax.get_title() for ax in fig.axes] == ["test_loss", "train_loss"]


def test_float_targets_with_a_class_loss_are_one_line(tmp_path):
    from bnlab.errors import UserError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 4)), rng.normal(size=100)
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    quick = [o for o in QUICK if o != "data=digits"]
    with pytest.raises(UserError) as info:
        train([*quick, "data=arrays", f"data.path={path}"], tmp_path / "run")
    assert "loss=softmax_cross_entropy needs integer class labels" in str(info.value)


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        (
            ["optimizer=optax", "optimizer._target_=optax.softmax_cross_entropy"],
            "optimizer._target_=optax.softmax_cross_entropy fails when called as",
        ),
        (
            ["optimizer=optax", "optimizer._target_=real_models.hinge"],
            "optimizer._target_=real_models.hinge fails when called as",
        ),
        (
            ["loss=own", "loss._target_=real_models.mean_loss"],
            "loss._target_=real_models.mean_loss returns () for a batch of 32: it must return one",
        ),
        (
            ["loss=own", "loss._target_=real_models.clipped_adam"],
            "loss._target_=real_models.clipped_adam fails on (outputs (32, 10), labels (32,))",
        ),
        (["optimizer=optax"], "optimizer=optax needs optimizer._target_"),
        (["loss.label_smoothing=1"], "loss.label_smoothing=1.0 must be in [0, 1)"),
    ],
    ids=[
        "not-a-factory",
        "not-an-optimizer",
        "loss-shape",
        "loss-signature",
        "no-target",
        "smoothing",
    ],  # fmt: skip
)
def test_bad_loss_and_optimizer_are_one_line_errors(tmp_path, over, needle):
    from bnlab.errors import UserError

    with pytest.raises(UserError) as info:
        train([*MLP, *OWN[1:2], *over], tmp_path / "run")
    assert needle in str(info.value) and "\n" not in str(info.value)
    run = tmp_path / "run"  # nothing written (the lock aside)
    assert not run.exists() or {p.name for p in run.iterdir()} <= {".lock"}


# --------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize(
    "extra",
    [
        ["model.features=[32]"],
        ["model=cnn", "data.flatten=false", "model.channels=[8]", "model.features=[32]"],
    ],  # fmt: skip
    ids=["mlp", "cnn"],
)
def test_bf16_trains_with_float32_state(tmp_path, extra, record_property):
    """``precision=bf16``: the matmuls/convolutions of the step run in bfloat16, the
    parameters, optimizer state and BN statistics stay float32, and the MLP and the CNN
    learn digits (100 steps, momentum SGD)."""
    over = [*QUICK, *extra, "precision=bf16", "batch_size=32", "data.probe_size=64",
            "optimizer=momentum", "optimizer.lr=0.05", *RUN]  # fmt: skip
    e, states, _ = engine_for(over, probes=False)
    st = unstack(states, 0)
    x, y = jnp.asarray(e.data["train_x"][:32]), jnp.asarray(e.data["train_y"][:32])
    jaxpr = str(jax.make_jaxpr(e.learner.train_step)(st, x, y))
    ops = [ln for ln in jaxpr.splitlines() if "dot_general" in ln or "conv_general" in ln]
    assert ops and all("bf16[" in ln for ln in ops)
    new = jax.jit(e.learner.train_step)(st, x, y)[0]
    for tree in (new.params, new.opt_state, new.batch_stats):
        assert {
            a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)
        } <= {jnp.dtype(jnp.float32)}
    (s,) = train(over, tmp_path)
    t = tables(tmp_path)
    acc = t["scalars.parquet"].query("name == 'test_accuracy'")["value"].iloc[-1]
    record_property("summary", f"bf16 {extra[0]}: 100 steps, test accuracy {acc:.3f}")
    assert s["status"] == "finished" and acc > 0.6  # chance: 0.1
    assert np.isfinite(t["activations.parquet"]["value"]).all()


def test_an_unknown_precision_is_one_line(tmp_path):
    res = cli([*QUICK, "precision=fp8", f"hydra.run.dir={tmp_path / 'run'}"], timeout=300)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("bnlab: error: precision=fp8") and "bf16" in last, last
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_each_data_shard_draws_its_own_dropout_masks(tmp_path):
    """``parallel.data=2`` (2 simulated CPU devices, tests/shard_dropout_check.py): the
    shards draw different masks on the same examples (linen, NNX stored and call-time
    rngs), stored streams keep their keys, probes agree, a short run finishes. One
    device's keys are unchanged (the resume and seed tests above)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    res = subprocess.run([sys.executable, str(TESTS / "shard_dropout_check.py"), str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]
