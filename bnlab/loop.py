"""Train state and the compiled chunk: many SGD steps and probes in one XLA program.

A chunk is ``chunk_steps`` steps: an outer ``lax.scan`` over probe intervals, each an
inner ``lax.scan`` of ``probe.every`` training steps followed by one probe of the
fixed probe batch. Batches are drawn on device from the epoch permutations the chunk
spans, so the host only wakes between chunks.

With a ``probe_device`` (``probe.overlap``), the chunk returns the state at every
probe (params and batch_stats) instead of its activation statistics, and a second
program computes those on that device, so they overlap with the next chunk's steps;
the per-layer parameter statistics, which need the step's gradients, stay in the
chunk. The numbers are the same either way.

With ``probe.ics_every > 0`` the probe of every interval that ends on a multiple of
it also measures gradient-ICS and the landscape along the gradient
(:func:`bnlab.probe.gradient_ics`, :func:`bnlab.probe.landscape`) on that interval's
last training batch, at the state after the interval, under ``lax.cond`` (nothing is
added to the program when it is 0).

Noisy BN draws the noise of step t from ``noise_key(state.key, t)``: a function of
the run's seed and the step, so runs are reproducible and resume exactly. Train-mode
probes (``probe.bn_mode=batch``) see noise too (their own stream), since what the
next layer sees is the question; evaluation and eval-mode probes do not. Under
``parallel.data > 1`` every device draws with the same key, so the devices' slices of
the batch get the same noise pattern (one distribution per step, as it should be, but
not independent across devices).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from bnlab import data as bdata
from bnlab import probe
from bnlab.models import CNN, MLP, activation_sources, flatten_sites, layer_names
from bnlab.norm import BatchNorm, NoNorm

Array = jax.Array
NORMS = ("none", "bn", "bn_noaffine", "bn_nostatgrad", "bn_ghost", "bn_noisy")
NOISE_STREAM, PROBE_NOISE_STREAM = 0x6E6F6973, 0x70726F62  # fold_in tags of the noise keys


def noise_key(key: Array, step: Array | int, stream: int = NOISE_STREAM) -> Array:
    """The noisy-BN key of training step ``step`` (the step taken from ``step``)."""
    return jax.random.fold_in(jax.random.fold_in(key, stream), step)


@struct.dataclass
class TrainState:
    step: Array  # int32 scalar: training steps done
    params: Any
    batch_stats: Any
    opt_state: Any
    key: Array  # uint32[2] PRNG key (raw, so checkpoints can hold it)


def make_norm(cfg: Any, axis_name: str | None = None) -> Callable[..., nn.Module]:
    """The norm factory a model plugs into every hidden layer (``axis_name``: sync BN)."""
    if cfg.name == "none":
        return NoNorm
    return partial(
        BatchNorm,
        use_scale=cfg.use_scale,
        use_bias=cfg.use_bias,
        stats_grad=cfg.stats_grad,
        momentum=cfg.momentum,
        epsilon=cfg.epsilon,
        ghost_batch_size=cfg.ghost_batch_size,
        axis_name=axis_name,
        center_only=getattr(cfg, "center_only", False),
        noise_mean=getattr(cfg, "noise_mean", 0.0),
        noise_std=getattr(cfg, "noise_std", 0.0),
    )


def make_model(
    model_cfg: Any, norm_cfg: Any, num_classes: int, axis_name: str | None = None
) -> nn.Module:
    common = dict(
        features=tuple(model_cfg.features),
        num_classes=num_classes,
        activation=model_cfg.activation,
        norm=make_norm(norm_cfg, axis_name),
        norm_position=model_cfg.norm_position,
        init_std=model_cfg.init_std,
        use_bias=model_cfg.use_bias,
    )
    if model_cfg.name == "mlp":
        return MLP(**common)
    if model_cfg.name == "cnn":
        return CNN(channels=tuple(model_cfg.channels), **common)
    raise ValueError(f"unknown model.name={model_cfg.name!r}; use model=mlp or model=cnn")


def make_schedule(cfg: Any, steps: int) -> optax.Schedule:
    if cfg.schedule == "constant":
        sched = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        sched = optax.cosine_decay_schedule(cfg.lr, max(steps - cfg.warmup_steps, 1))
    elif cfg.schedule == "step":
        sched = optax.piecewise_constant_schedule(
            cfg.lr, {int(b) - cfg.warmup_steps: cfg.decay_factor for b in cfg.boundaries}
        )
    else:
        raise ValueError(
            f"unknown optimizer.schedule={cfg.schedule!r}; use constant, cosine or step"
        )
    if cfg.warmup_steps:
        warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
        sched = optax.join_schedules([warm, sched], [cfg.warmup_steps])
    return sched


def make_optimizer(cfg: Any, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    sched = make_schedule(cfg, steps)
    if cfg.name in ("sgd", "momentum"):
        tx = optax.sgd(sched, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif cfg.name == "adam":
        tx = optax.adam(sched, b1=cfg.b1, b2=cfg.b2)
    else:
        raise ValueError(f"unknown optimizer.name={cfg.name!r}; use sgd, momentum or adam")
    if cfg.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx, sched


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, x0: Array, seed: int
) -> TrainState:
    """Initial state; the init key and the data key both derive from ``seed``."""

    @jax.jit
    def init(root: Array) -> TrainState:
        variables = model.init(jax.random.fold_in(root, 0), x0, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            key=jax.random.fold_in(root, 1),
        )

    return init(jax.random.PRNGKey(seed))


def cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Mean softmax cross-entropy and accuracy."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return loss.mean(), (jnp.argmax(logits, -1) == labels).mean()


class Trainer:
    """Builds the jitted chunk, probe and eval functions for one model and dataset.

    The single-device engine. :mod:`bnlab.parallel` reuses it across devices: with
    ``axis_name`` set, the step functions run inside ``shard_map`` over that mesh axis,
    each device takes its ``batch_size // shards`` slice of the global batch, and the
    loss, accuracy and running-statistics update are averaged across devices (so are
    the gradients: they are taken of the averaged loss).
    """

    def __init__(
        self,
        model: nn.Module,
        tx: optax.GradientTransformation,
        schedule: optax.Schedule,
        ds: Any,
        *,
        batch_size: int,
        chunk_steps: int,
        probe_cfg: Any,
        eval_batch: int = 1000,
        probes: bool = True,
        axis_name: str | None = None,
        shards: int = 1,
        probe_device: jax.Device | None = None,
    ):
        if chunk_steps % probe_cfg.every:
            raise ValueError(
                f"chunk_steps={chunk_steps} must be a multiple of probe.every={probe_cfg.every}"
            )
        if probe_cfg.bn_mode not in ("batch", "eval"):
            raise ValueError(f"probe.bn_mode must be 'batch' or 'eval', got {probe_cfg.bn_mode!r}")
        n = ds.train_x.shape[0]
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
        if batch_size % shards:
            raise ValueError(
                f"batch_size={batch_size} must be divisible by the {shards} devices "
                "the batch is split over (parallel.data)"
            )
        self.model, self.tx, self.schedule = model, tx, schedule
        self.axis_name, self.shards = axis_name, shards
        self.local_batch = batch_size // shards  # examples per device
        self.batch_size, self.chunk_steps = batch_size, chunk_steps
        self.every = probe_cfg.every
        self.qs = tuple(float(q) for q in probe_cfg.percentiles)
        self.units = tuple(int(u) for u in probe_cfg.units)
        self.probe_eval = probe_cfg.bn_mode == "eval"
        self.probes = probes  # False: train only (the benchmarks' no-probe baseline)
        # activation probes on another device, alongside the next chunk's training
        self.probe_device = probe_device if probes else None
        self.ics_every = int(getattr(probe_cfg, "ics_every", 0) or 0) if probes else 0
        if self.ics_every and self.ics_every % self.every:
            raise ValueError(
                f"probe.ics_every={self.ics_every} must be a multiple of probe.every={self.every}"
            )
        self.landscape_steps = tuple(float(c) for c in getattr(probe_cfg, "landscape_steps", ()))
        norm = getattr(model, "norm", None)
        norm_kw = getattr(norm, "keywords", {})
        self.noisy = bool(norm_kw.get("noise_mean")) or bool(norm_kw.get("noise_std"))
        ghost = norm_kw.get("ghost_batch_size")
        if ghost and self.local_batch % ghost:
            raise ValueError(
                f"norm.ghost_batch_size={ghost} must divide the batch of {self.local_batch} "
                "examples (batch_size, per device)"
            )
        n_probe = ds.probe_x.shape[0]
        if ghost and probes and not self.probe_eval and n_probe % ghost:
            raise ValueError(
                f"norm.ghost_batch_size={ghost} must divide the probe batch of {n_probe} "
                "examples (BN in train mode on it); set data.probe_size to a multiple of it, "
                "or probe.bn_mode=eval"
            )
        self.eval_batch = eval_batch
        # device arrays are passed to the jitted functions, never closed over (no constants)
        self.data = {
            k: jnp.asarray(getattr(ds, k))
            for k in ("train_x", "train_y", "test_x", "test_y", "probe_x")
        }
        self.data = self.place(self.data)
        if self.probe_device is not None:
            self.remote_probe_x = jax.device_put(self.data["probe_x"], self.probe_device)
            self.remote_test = jax.device_put(
                (self.data["test_x"], self.data["test_y"]), self.probe_device
            )
        self.n_train = n
        self.steps_per_epoch = n // batch_size
        # epochs a chunk can touch: enough permutations for any chunk start
        self.n_perms = chunk_steps // self.steps_per_epoch + 2
        self._compile()

    def _compile(self) -> None:
        """jit the chunk, probe and eval functions (:mod:`bnlab.parallel` shards them)."""
        self._chunk_jit = jax.jit(self._chunk, static_argnames="length", donate_argnums=0)
        self._measure_jit = jax.jit(self._measure)
        self._evaluate_jit = jax.jit(self._evaluate)
        self._snapshot_acts_jit = jax.jit(self._snapshot_acts)

    def place(self, tree: Any) -> Any:
        """Put a state (or data) where the compiled functions expect it: as it is here."""
        return tree

    def chunk(self, state: TrainState, length: int) -> tuple[TrainState, dict]:
        """Run ``length`` steps (a multiple of ``probe.every``) with a probe after every
        ``probe.every``; returns the new state and the measurements, one row per probe.

        Both come back as futures. With a ``probe_device``, ``out['acts']`` is computed
        there from the chunk's snapshots once the chunk is done, so it overlaps with
        the next chunk if the caller dispatches that before reading ``acts``.
        """
        state, out = self._chunk_jit(state, self.data, length=length)
        if self.probe_device is not None:
            out["acts"] = self.activations_beside(out.pop("snaps"))
        return state, out

    def activations_beside(self, snaps: TrainState) -> dict:
        """Activation statistics of every state in ``snaps`` (leading axes: those of
        ``snaps.step``), computed on the probe device; returns a future."""
        snaps = jax.device_put(snaps, self.probe_device)
        return self._snapshot_acts_jit(snaps, self.remote_probe_x)

    def measure(self, state: TrainState) -> tuple[dict, dict]:
        """Probe ``state`` (gradient norms read as zero: no step has been taken)."""
        return self._measure_jit(state, self.zero_grads(state), self.data["probe_x"])

    def evaluate(self, state: TrainState) -> tuple[Array, Array]:
        """Test loss and accuracy with BN in eval mode."""
        return self._evaluate_jit(state, self.data["test_x"], self.data["test_y"])

    def evaluate_beside(self, state: TrainState) -> tuple[Array, Array]:
        """:meth:`evaluate` on the probe device where there is one (on a copy of
        ``state``, made before the caller donates it to the next chunk), so the test
        set's forward pass runs alongside training; else :meth:`evaluate`."""
        if self.probe_device is None:
            return self.evaluate(state)
        copy = jax.block_until_ready(jax.device_put(state, self.probe_device))
        return self._evaluate_jit(copy, *self.remote_test)

    # -- one training step -------------------------------------------------
    def train_rngs(self, state: TrainState, stream: int = NOISE_STREAM) -> dict | None:
        """``rngs`` for a train-mode apply at ``state`` (noisy BN's key), else None."""
        return {"noise": noise_key(state.key, state.step, stream)} if self.noisy else None

    def _loss(self, params, batch_stats, x, y, rngs=None):
        logits, upd = self.model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True,
            mutable=["batch_stats"], rngs=rngs,
        )  # fmt: skip
        loss, acc = cross_entropy(logits, y)
        new_stats = upd.get("batch_stats", batch_stats)
        if self.axis_name is not None:
            # the global batch's loss (its gradient is the device average), and one
            # running-statistics update on every device (flax#877): a no-op with sync
            # BN, the average of the per-device updates without
            loss, acc, new_stats = jax.lax.pmean((loss, acc, new_stats), self.axis_name)
        return loss, (new_stats, acc)

    def _step(self, state: TrainState, x: Array, y: Array):
        (loss, (bs, acc)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state.params, state.batch_stats, x, y, self.train_rngs(state)
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, batch_stats=bs, opt_state=opt_state)
        return new, grads, loss, acc

    # -- probes ---------------------------------------------------------------
    def _measure(self, state: TrainState, grads: Any, probe_x: Array) -> tuple[dict, dict]:
        """Activation statistics on the probe batch and per-layer parameter statistics."""
        return self._activations(state, probe_x), self._measure_layers(state, grads)

    def _measure_layers(self, state: TrainState, grads: Any) -> dict:
        return probe.layer_stats(state.params, grads, state.batch_stats, layer_names(state.params))

    def _activations(self, state: TrainState, probe_x: Array) -> dict:
        """Activation statistics of every site on the probe batch (running stats kept)."""
        _, out = self.model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            probe_x,
            train=not self.probe_eval,
            mutable=["sites", "batch_stats"],
            rngs=None if self.probe_eval else self.train_rngs(state, PROBE_NOISE_STREAM),
        )
        sites = flatten_sites(out["sites"])
        derived = activation_sources(sites, self.model.activation, self.model.norm_position)
        return probe.activation_stats(sites, self.qs, self.units, derived)

    def _snapshot_acts(self, snaps: TrainState, probe_x: Array) -> dict:
        """:meth:`_activations` of every snapshot, one after another (``lax.map``: the
        percentiles' histogram scatters are slow batched on CPU)."""
        lead = snaps.step.shape
        flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[len(lead) :]), snaps)
        out = jax.lax.map(lambda st: self._activations(st, probe_x), flat)
        return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)

    def _ics(self, state: TrainState, x: Array, y: Array) -> dict:
        """Gradient-ICS per layer and the landscape measures (layer ``all``) on one batch:
        the step the optimizer would take from ``state`` on it (same noise throughout)."""
        rngs = self.train_rngs(state)

        def loss_fn(params, batch):
            return self._loss(params, state.batch_stats, batch[0], batch[1], rngs)[0]

        grads = jax.grad(loss_fn)(state.params, (x, y))
        updates, _ = self.tx.update(grads, state.opt_state, state.params)
        layers = [*layer_names(state.params), "head"]
        out = probe.gradient_ics(loss_fn, state.params, (x, y), updates, layers)
        lr = self.schedule(state.step)
        out["all"] = probe.landscape(loss_fn, state.params, (x, y), lr, self.landscape_steps)
        return out

    def zero_grads(self, state: TrainState) -> Any:
        return jax.tree.map(jnp.zeros_like, state.params)

    # -- the compiled chunk -----------------------------------------------
    def _chunk(self, state: TrainState, data: dict, length: int):
        n = self.n_train
        bs, spe = self.batch_size, self.steps_per_epoch
        epoch0 = state.step // spe
        perms = jax.vmap(lambda e: bdata.epoch_permutation(state.key, e, n))(
            epoch0 + jnp.arange(self.n_perms)
        )

        def indices(st):
            e = st.step // spe - epoch0
            start = (st.step % spe) * bs
            if self.axis_name is not None:  # this device's slice of the global batch
                start = start + jax.lax.axis_index(self.axis_name) * self.local_batch
            return jax.lax.dynamic_slice(perms[e], (start,), (self.local_batch,))

        def step(carry, _):
            st = carry[0]
            idx = indices(st)
            st, grads, loss, acc = self._step(st, data["train_x"][idx], data["train_y"][idx])
            # with ICS probes on, the batch indices ride along (the interval's last batch)
            return (st, grads, idx) if self.ics_every else (st, grads), (loss, acc)

        def interval(carry, _):
            carry, (loss, acc) = jax.lax.scan(step, carry, None, length=self.every)
            st, grads = carry[:2]
            res = dict(loss=loss, acc=acc, step=st.step, acts={}, layers={})
            if self.probe_device is not None:  # activations later, on the probe device
                res["layers"] = self._measure_layers(st, grads)
                res["snaps"] = st.replace(opt_state=None)
            elif self.probes:
                res["acts"], res["layers"] = self._measure(st, grads, data["probe_x"])
            if self.ics_every:
                x, y = data["train_x"][carry[2]], data["train_y"][carry[2]]
                due = st.step % self.ics_every == 0
                shapes = jax.eval_shape(self._ics, st, x, y)
                res["ics"] = jax.lax.cond(
                    due, lambda: self._ics(st, x, y),
                    lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                )  # fmt: skip
                res["ics_due"] = due
            return carry, res

        carry = (state, self.zero_grads(state))
        if self.ics_every:  # any batch's indices (per device where sharded): overwritten
            carry += (indices(state),)
        carry, out = jax.lax.scan(interval, carry, None, length=length // self.every)
        state = carry[0]
        out["lr"] = jax.vmap(self.schedule)(out["step"])
        return state, out

    # -- evaluation -------------------------------------------------------
    def _evaluate(self, state: TrainState, x: Array, y: Array) -> tuple[Array, Array]:
        n = x.shape[0]
        b = min(self.eval_batch, n)
        pad = (-n) % b
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
        y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        mask = jnp.arange(n + pad) < n

        def one(args):
            xb, yb, mb = args
            logits = self.model.apply(
                {"params": state.params, "batch_stats": state.batch_stats}, xb, train=False
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), yb)
            return jnp.sum(loss * mb), jnp.sum((jnp.argmax(logits, -1) == yb) * mb)

        shape = lambda a: a.reshape((-1, b) + a.shape[1:])  # noqa: E731
        loss, correct = jax.lax.map(one, (shape(x), shape(y), shape(mask)))
        return loss.sum() / n, correct.sum() / n
