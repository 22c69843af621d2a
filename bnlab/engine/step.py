"""One member's functions: its loss, its training step, its probes and its evaluation.

Pure functions of a single member's :class:`TrainState` (no member axis): the
:class:`~bnlab.engine.chunk.Engine` maps them over the members of a device and the devices
of a mesh. :meth:`Learner.train_step` freezes a member whose loss is non-finite or
above ``diverge_loss`` (``alive`` turns false; its parameters, running statistics and
optimizer state keep their values), so no NaN reaches the others.

Noisy BN draws the noise of step t from ``noise_key(state.key, t)``, and every other
random draw of the model (dropout, any linen rng name, NNX ``rngs`` passed at call time)
from ``noise_key(state.key, t, RNG_STREAM)``: ``state.key`` derives from the member's
seed, so runs are reproducible, a resumed run draws the keys the uninterrupted run
would, and the members of a sweep with different seeds draw different masks (members
that differ only by lr share a seed's masks, as their single runs would). Under
``parallel.data>1`` each data shard folds its index into those keys (noisy BN's noise
stays the global batch's); one device draws exactly the unfolded keys. NNX RNG
streams stored in the model are state (``TrainState.extra``), carried and checkpointed.
Train-mode probes draw from their own streams; evaluation runs with dropout off, probes
too unless ``probe.dropout=train``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from bnlab import measure as probe
from bnlab.engine.devices import DATA
from bnlab.engine.diagnostics import scale_invariant_layers
from bnlab.engine.loss import has_classes
from bnlab.engine.optim import peak_lr, with_lr
from bnlab.models.network import Network

Array = jax.Array
NOISE_STREAM, PROBE_NOISE_STREAM = 0x6E6F6973, 0x70726F62  # fold_in tags of the noise keys
RNG_STREAM, PROBE_RNG_STREAM, EVAL_RNG_STREAM = 0x726E67, 0x70726E67, 0x65726E67


def noise_key(key: Array, step: Array | int, stream: int = NOISE_STREAM) -> Array:
    """The noisy-BN key of training step ``step``."""
    return jax.random.fold_in(jax.random.fold_in(key, stream), step)


@struct.dataclass
class TrainState:
    step: Array  # int32: training steps done
    params: Any
    batch_stats: Any
    opt_state: Any  # optax inject_hyperparams state: the peak lr is in it
    key: Array  # uint32[2] (raw, so checkpoints hold it): data order and noise
    alive: Array  # bool: false once the loss went bad (the member is frozen)
    extra: Any  # every other variable of the model (bnlab.models.variables)


def softmax_ce(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy per example (the default ``loss``)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


class Learner:
    """The per-member functions of one model and optimizer.

    ``net`` trains (a :class:`~bnlab.models.network.Network`, linen or NNX; its BN may
    average statistics over the mesh's ``data`` axis, of ``shards`` devices);
    ``probe_net`` is the same network with local statistics, for probes and evaluation.
    ``unit`` is the optimizer's unit schedule (:mod:`bnlab.engine.optim`); ``loss`` the
    per-example loss (:mod:`bnlab.engine.loss`, softmax cross-entropy). ``unroll``: loops
    over probe batches and evaluation batches are unrolled in the trace instead of
    ``lax.map`` (XLA:CPU runs convolutions inside a loop several times slower).
    """

    def __init__(self, net: Network, probe_net: Network, tx, unit, *, probe_cfg: Any,
                 diverge_loss: float, noisy: bool, shards: int = 1, eval_batch: int = 1000,
                 unroll: bool = False, loss=softmax_ce, compute_dtype: Any = None):  # fmt: skip
        self.net, self.probe_net, self.tx, self.unit = net, probe_net, tx, unit
        self.loss, self.compute_dtype = loss, compute_dtype
        self.unroll = unroll
        self.sample = probe_cfg.sample
        self.sample_seed = probe_cfg.sample_seed
        self.qs = tuple(float(q) for q in probe_cfg.percentiles)
        self.units = tuple(int(u) for u in probe_cfg.units)
        self.probe_eval = probe_cfg.bn_mode == "eval"
        self.probe_dropout = probe_cfg.dropout == "train"
        self.landscape_steps = tuple(float(c) for c in probe_cfg.landscape_steps)
        self.landscape_lengths = tuple(float(v) for v in probe_cfg.landscape_lengths)
        self.diverge_loss, self.noisy, self.eval_batch = diverge_loss, noisy, eval_batch
        self.shards = shards

    def rngs(self, st: TrainState, probe: bool = False) -> dict[str, Any]:
        """The keys of an apply at ``st``: noisy BN's (or None) and the model's
        ``rng`` (training's, or the probes' own streams)."""
        noise = PROBE_NOISE_STREAM if probe else NOISE_STREAM
        rng = PROBE_RNG_STREAM if probe else RNG_STREAM
        keys = dict(noise_key=noise_key(st.key, st.step, noise) if self.noisy else None,
                    rng=noise_key(st.key, st.step, rng))  # fmt: skip
        if self.shards > 1 and not probe:  # each data shard draws its own masks
            keys["shard"] = lax.axis_index(DATA)
        return keys

    def cast(self, params: Any, x: Array) -> tuple[Any, Array]:
        """``precision=bf16``: bfloat16 copies of the float parameters and the input (the
        float32 parameters get the gradient through the cast); else both as they are."""
        if self.compute_dtype is None:
            return params, x

        def down(a):
            return a.astype(self.compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

        return jax.tree.map(down, params), down(x)

    def loss_fn(self, params, batch_stats, x, y, rngs=None, extra=None):
        """Training loss on one batch: ``(loss, (new_batch_stats, new_extra, accuracy))``
        (``rngs``: :meth:`rngs`; ``extra``: the model's other state)."""
        params, x = self.cast(params, x)
        logits, new_stats, new_extra, _ = self.net.apply_state(
            params, batch_stats, x, train=True, extra=extra, **(rngs or {})
        )
        logits = logits.astype(jnp.float32)
        loss, acc = self.loss(logits, y).mean(), accuracy(logits, y).mean()
        if self.shards > 1:
            # the global batch's loss (its gradient is the device average), and one
            # running-statistics update on every device (flax#877)
            loss, acc, new_stats = lax.pmean((loss, acc, new_stats), DATA)
        return loss, (new_stats, new_extra, acc)

    def train_step(self, st: TrainState, x: Array, y: Array):
        """One member's step: ``(state, (loss, accuracy, (gradients, update)))``, the
        update the one applied (zero where the member is frozen); a member that is not
        alive, or whose loss goes bad now, keeps its state and is not alive. Only the
        probe's step reads gradients and update (XLA drops them from the others)."""
        (loss, (bs, extra, acc)), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            st.params, st.batch_stats, x, y, self.rngs(st), st.extra
        )
        ok = st.alive & (jnp.abs(loss) <= self.diverge_loss)  # NaN compares false
        updates, opt_state = self.tx.update(grads, st.opt_state, st.params)
        params = optax.apply_updates(st.params, updates)
        stepped = st.replace(step=st.step + 1, params=params, batch_stats=bs,
                             opt_state=opt_state, extra=extra)  # fmt: skip
        # a branch, not a select over every array: one member's step (a single run) skips
        # the elementwise copies (7% of the Fig. 1 step); vmapped it is the select
        new = lax.cond(ok, lambda: stepped, lambda: st).replace(alive=ok)
        applied = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
        return new, (loss, acc, (grads, applied))

    def lr_at(self, st: TrainState, step: Array) -> Array:
        return peak_lr(st.opt_state) * self.unit(step)

    def layer_stats(self, st: TrainState, grads: Any, updates: Any = None) -> dict:
        """Layer statistics of ``st`` after a step of gradients ``grads`` and applied
        update ``updates`` (``update_ratio`` only with it), and the scale-invariant
        layers' ``effective_lr`` at the state's step."""
        stats = self.net.layer_stats(st.params, grads, st.batch_stats, updates)
        lr, layers = self.lr_at(st, st.step), scale_invariant_layers(self.net, st.params)
        return probe.effective_lr(stats, layers, lr)

    def last_layer_stats(self, st: TrainState, last: tuple[Any, Any]) -> dict:
        """:meth:`layer_stats` of ``last``, a step's ``(gradients, update)``."""
        return self.layer_stats(st, *last)

    def sites(self, st: TrainState, probe_x: Array) -> dict[str, Array]:
        """The raw values of the probed sites on the probe batch (``{site: array}``, BN as
        ``probe.bn_mode`` says; the running statistics are not updated)."""
        keys = self.rngs(st, probe=True)
        if self.probe_eval:
            keys["noise_key"] = None
        params, probe_x = self.cast(st.params, probe_x)
        _, _, sites = self.probe_net.apply(
            params, st.batch_stats, probe_x, train=not self.probe_eval, capture=True,
            extra=st.extra, dropout=self.probe_dropout, **keys,
        )  # fmt: skip
        return {k: v.astype(jnp.float32) for k, v in sites.items()}  # bf16: float32 copies

    def histograms(self, st: TrainState, probe_x: Array, bins: int) -> dict:
        """``{site: probe.histogram(values, bins)}`` of every probed site on the probe batch."""
        return {k: probe.histogram(v, bins) for k, v in self.sites(st, probe_x).items()}

    def activations(self, st: TrainState, probe_x: Array) -> dict:
        """Activation statistics of the probed sites on the probe batch (running stats
        kept)."""
        sites = self.sites(st, probe_x)
        lay = self.probe_net.layout
        derived, dead = (lay.derived, lay.activation_outputs) if lay else ({}, ())
        return probe.activation_stats(sites, self.qs, self.units, derived, self.sample,
                                      self.sample_seed, dead)  # fmt: skip

    def ics(self, st: TrainState, x: Array, y: Array) -> dict:
        """Gradient-ICS per layer and the landscape (layer ``all``) on one batch: the
        step the optimizer would take from ``st`` on it (same noise throughout)."""
        rngs = self.rngs(st)

        def loss_fn(params, batch):
            return self.loss_fn(params, st.batch_stats, batch[0], batch[1], rngs, st.extra)[0]

        grads = jax.grad(loss_fn)(st.params, (x, y))
        updates, _ = self.tx.update(grads, st.opt_state, st.params)
        out = probe.gradient_ics(loss_fn, st.params, (x, y), updates,
                                 self.net.ics_layers(st.params))  # fmt: skip
        out["all"] = probe.landscape(loss_fn, st.params, (x, y), self.lr_at(st, st.step),
                                     self.landscape_steps, self.landscape_lengths)  # fmt: skip
        return out

    def evaluate_one(self, st: TrainState, x: Array, y: Array) -> tuple[Array, Array]:
        """Loss and accuracy on a whole split, BN in eval mode (padded fixed batches);
        accuracy NaN where the targets are floats (no classes)."""
        n = x.shape[0]
        b = min(self.eval_batch, n)
        pad = (-n) % b
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
        y = jnp.concatenate([y, jnp.zeros((pad,) + y.shape[1:], y.dtype)])
        mask = jnp.arange(n + pad) < n
        eval_key = noise_key(st.key, st.step, EVAL_RNG_STREAM)  # dropout is off; rng names

        def one(args):
            xb, yb, mb = args
            params, xb = self.cast(st.params, xb)
            logits = self.probe_net.apply(params, st.batch_stats, xb, train=False,
                                          extra=st.extra, rng=eval_key)[0]  # fmt: skip
            logits = logits.astype(jnp.float32)
            loss = self.loss(logits, yb)
            return jnp.sum(loss * mb), jnp.sum(accuracy(logits, yb) * mb)

        shape = lambda a: a.reshape((-1, b) + a.shape[1:])  # noqa: E731
        loss, correct = loop_map(one, (shape(x), shape(y), shape(mask)), self.unroll)
        return loss.sum() / n, correct.sum() / n

    def init(self, seed: Array, lr: Array, x0: Array) -> TrainState:
        """A member's initial state: its init key and data key derive from ``seed``;
        its peak learning rate is ``lr``."""
        root = jax.random.PRNGKey(seed)
        params, batch_stats, extra = self.net.init_state(jax.random.fold_in(root, 0), x0)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
            opt_state=with_lr(self.tx.init(params), lr),
            key=jax.random.fold_in(root, 1), alive=jnp.ones((), bool), extra=extra,
        )  # fmt: skip


def accuracy(logits: Array, y: Array) -> Array:
    """Per example: whether the argmax is the integer label; NaN for float targets (a
    task without classes records no accuracy)."""
    if has_classes(y):
        return (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.full(logits.shape[:1], jnp.nan, jnp.float32)


def loop_map(fn, xs, unroll: bool):
    """``lax.map(fn, xs)``, or with ``unroll`` the same as a loop in the trace (no XLA
    while loop: XLA:CPU runs convolutions inside one several times slower)."""
    if not unroll:
        return lax.map(fn, xs)
    n = jax.tree.leaves(xs)[0].shape[0]
    outs = [fn(jax.tree.map(lambda a, i=i: a[i], xs)) for i in range(n)]
    return jax.tree.map(lambda *o: jnp.stack(o), *outs)


def stack(states: list[TrainState]) -> TrainState:
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def unstack(states: TrainState, m: int) -> TrainState:
    return jax.tree.map(lambda a: a[m], states)
