"""Vectorized sweeps: many members (learning rates x seeds) trained in one compiled program.

``python -m bnlab.train sweep.lr=[0.01,0.1,1] sweep.seeds=2`` trains 3 x 2 = 6
members with ``jax.vmap`` over independent train states, inside the same compiled
chunk as a single run (:class:`bnlab.loop.Trainer`: ``lax.scan`` of steps + probes),
and writes one run record per member into ``<run dir>/<member index>/``, with the
same schema as a Hydra multirun job: tables, ``summary.json``, ``checkpoints/``,
``figures/`` and ``.hydra/config.yaml`` + ``.hydra/overrides.yaml`` (the member's
``optimizer.lr=...``/``seed=...`` in place of ``sweep.*``). So
:func:`bnlab.runs.load_sweep` reads ``<run dir>`` exactly like a multirun directory
(the run dir's own ``.hydra/`` is moved to ``.hydra-sweep/`` so the directory itself
does not look like one run), and each member's config re-runs it as a single run.

Members
    ``sweep.lr=[a,b,...]`` sets ``optimizer.lr`` per member; ``sweep.seeds=N`` makes
    members with seeds ``seed .. seed+N-1``; both give the grid, learning rate major
    (member ``i`` = lr ``i // N``, seed ``i % N``, the order of ``-m optimizer.lr=a,b
    seed=0,1``). A member's seed sets both its initialization and its data order, as
    in a single run, so every member equals the single run with its settings (within
    float tolerance: the batched matmuls add in another order). Members of one seed
    share every batch: the batch is not vmapped over learning rates, so XLA computes
    the first layer of all of them as one wide matmul.

Learning rate
    The optimizer is built with lr 1 and each member scales the updates by its own
    lr. For the optimizers and schedules bnlab offers (sgd, momentum, adam; constant,
    cosine, step, warmup) the update is proportional to the lr, so this is the same
    optimizer; the recorded ``lr`` scalar is the member's lr times the unit schedule.

Divergence
    A member whose loss is non-finite or above ``diverge_loss`` freezes at that step:
    its update is masked to zero and its running statistics and optimizer state are
    kept (``jnp.where``), so it never turns NaN and nothing of it reaches the others
    (vmapped members share no arithmetic). Its record is truncated exactly as a single
    diverged run's: status ``diverged``, ``diverged_at`` the step, no rows from it on.
    The other members go on.

Resume works as for a single run: each member checkpoints into its own
``checkpoints/``; a re-run into the same directory continues the unfinished members
from their last common checkpoint (a member checkpoint also resumes as a single run).

This module sits on top of :mod:`bnlab.loop`, :mod:`bnlab.host` and the row helpers
of :mod:`bnlab.record` (the ones a single run uses, so a member's rows are a single
run's rows); :mod:`bnlab.train` hands off to :func:`main` when ``sweep.lr`` or
``sweep.seeds`` is set, and this module never imports it.
"""

from __future__ import annotations

import copy
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import DictConfig, OmegaConf

from bnlab import data as bdata
from bnlab import host, loop, parallel
from bnlab.checkpoint import Checkpoints
from bnlab.console import UserError, say
from bnlab.record import (
    RunRecord,
    activation_rows,
    chunk_rows,
    eval_rows,
    map_stats,
    probe_rows,
)

HIDDEN_HYDRA = ".hydra-sweep"  # where the sweep's own .hydra/ goes (not a run dir)


@dataclass(frozen=True)
class Member:
    index: int
    lr: float
    seed: int


def members(cfg: DictConfig) -> tuple[list[float], list[int], list[Member]]:
    """The learning rates, the seeds and the members (learning rate major)."""
    lrs = [float(v) for v in cfg.sweep.lr] or [float(cfg.optimizer.lr)]
    if cfg.sweep.seeds < 0:
        raise UserError(f"sweep.seeds must be >= 0, got {cfg.sweep.seeds}")
    seeds = [cfg.seed + i for i in range(max(cfg.sweep.seeds, 1))]
    if len(set(lrs)) < len(lrs):
        raise UserError(f"sweep.lr has repeated values: {lrs}")
    bad = [v for v in lrs if not v > 0]
    if bad:
        raise UserError(f"sweep.lr values must be > 0, got {bad}")
    ms = [
        Member(i * len(seeds) + j, lr, s) for i, lr in enumerate(lrs) for j, s in enumerate(seeds)
    ]
    return lrs, seeds, ms


# --------------------------------------------------------------------------- compiled


class SweepTrainer:
    """The compiled chunk, probe and eval of ``L`` learning rates x ``S`` seeds.

    Wraps a :class:`bnlab.loop.Trainer` built with a unit learning rate (its model,
    data, loss, probe and eval are reused per member). Stacked states have leading
    axes ``(L, S)``: an outer ``vmap`` over learning rates with the batch shared
    (``in_axes=None``) around an inner ``vmap`` over seeds with the batch vmapped.
    """

    def __init__(self, trainer: loop.Trainer, lrs: list[float], n_seeds: int, diverge_loss: float):
        self.tr = trainer
        self.lrs = jnp.asarray(lrs, jnp.float32)
        self.L, self.S = len(lrs), n_seeds
        self.diverge_loss = diverge_loss
        self._chunk_jit = jax.jit(self._chunk, static_argnames="length", donate_argnums=0)
        self._measure_jit = jax.jit(self._measure)
        self._evaluate_jit = jax.jit(self._evaluate)

    # -- states -----------------------------------------------------------
    def init(self, seeds: list[int]) -> loop.TrainState:
        """Stacked initial states: each seed's single-run init, repeated over the lrs."""
        tr = self.tr
        x0 = tr.data["train_x"][:2]
        per_seed = [loop.init_state(tr.model, tr.tx, x0, s) for s in seeds]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *per_seed)
        return jax.tree.map(lambda a: jnp.repeat(a[None], self.L, axis=0), stacked)

    def member(self, states: loop.TrainState, i: int) -> loop.TrainState:
        """Member ``i``'s state (unstacked: the structure of a single run's state)."""
        lr, s = divmod(i, self.S)
        return jax.tree.map(lambda a: a[lr, s], states)

    def stack(self, member_states: list[loop.TrainState]) -> loop.TrainState:
        """Inverse of :meth:`member` over all members (in member order)."""
        shape = (self.L, self.S)
        return jax.tree.map(lambda *a: jnp.stack(a).reshape(shape + a[0].shape), *member_states)

    # -- public calls -------------------------------------------------------
    def chunk(self, states, alive: np.ndarray, step: int, length: int):
        """``length`` steps of every member from global step ``step``; members with
        ``alive`` false (shape ``(L, S)``) stay frozen, and so does any member whose
        loss goes bad during the chunk. Returns states, alive and the measurements
        (probe rows first, then ``L, S``)."""
        states, alive, out = self._chunk_jit(
            states, jnp.asarray(alive), jnp.asarray(step, jnp.int32), self.lrs, self.tr.data,
            length=length,
        )  # fmt: skip
        if self.tr.probe_device is not None:  # as a single run: probes beside the next chunk
            out["acts"] = self.tr.activations_beside(out.pop("snaps"))
        return states, alive, out

    def measure(self, states):
        zeros = jax.tree.map(jnp.zeros_like, states.params)
        return self._measure_jit(states, zeros, self.tr.data["probe_x"])

    def evaluate(self, states):
        return self._evaluate_jit(states, self.tr.data["test_x"], self.tr.data["test_y"])

    # -- vmapped pieces -----------------------------------------------------
    def over_members(self, fn, kinds: tuple[str | None, ...]):
        """``fn(*args)`` of one member, vmapped over the ``(L, S)`` member axes.

        ``kinds[k]`` says how argument k varies: ``'member'`` (leading ``(L, S)``),
        ``'lr'`` (leading ``L``), ``'seed'`` (leading ``S``) or ``None`` (shared: not
        vmapped, so a shared batch meets every member's weights in one wide matmul).
        Outputs have leading ``(L, S)``. A single lr or seed is squeezed rather than
        vmapped over a unit axis (which would cost transposes in every step).
        """
        L, S = self.L, self.S
        by_lr = tuple(0 if k in ("member", "lr") else None for k in kinds)
        by_seed = tuple(0 if k in ("member", "seed") else None for k in kinds)

        def squeeze(args, axis_of):
            out = []
            for a, k in zip(args, kinds, strict=True):
                pick = axis_of(k)
                out.append(a if pick is None else jax.tree.map(lambda v, p=pick: v[p], a))
            return out

        def wrapped(*args):
            if S == 1:  # drop the seed axis: member [:, 0], seed [0]
                args = squeeze(args, lambda k: {"member": (slice(None), 0), "seed": 0}.get(k))
                out = jax.vmap(fn, in_axes=by_lr)(*args)
                return jax.tree.map(lambda o: o[:, None], out)
            if L == 1:  # drop the lr axis: member [0], lr [0]
                args = squeeze(args, lambda k: 0 if k in ("member", "lr") else None)
                out = jax.vmap(fn, in_axes=by_seed)(*args)
                return jax.tree.map(lambda o: o[None], out)
            return jax.vmap(jax.vmap(fn, in_axes=by_seed), in_axes=by_lr)(*args)

        return wrapped

    def _member_step(self, st: loop.TrainState, ok: jax.Array, lr: jax.Array, x, y):
        """One member's step; a member that is not ``ok`` or whose loss goes bad now
        keeps its state (a frozen member never feeds NaN into the shared program)."""
        tr = self.tr
        (loss, (bs, acc)), grads = jax.value_and_grad(tr._loss, has_aux=True)(
            st.params, st.batch_stats, x, y, tr.train_rngs(st)
        )
        ok = ok & (jnp.abs(loss) <= self.diverge_loss)  # NaN compares false
        updates, opt_state = tr.tx.update(grads, st.opt_state, st.params)
        # the unit-lr update times this member's lr (sgd: -1 * g * lr == -lr * g exactly),
        # or nothing for a frozen member
        updates = jax.tree.map(lambda u: jnp.where(ok, lr.astype(u.dtype) * u, 0), updates)
        params = optax.apply_updates(st.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new = st.replace(
            step=jnp.where(ok, st.step + 1, st.step), params=params,
            batch_stats=keep(bs, st.batch_stats), opt_state=keep(opt_state, st.opt_state),
        )  # fmt: skip
        return new, ok, grads, loss, acc

    def _measure(self, states, grads, probe_x):
        """The probe of every member, one after another (``lax.map``, not ``vmap``: the
        percentiles' histogram scatters are slow batched on CPU)."""
        lead = (self.L, self.S)
        flat = lambda t: jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), t)  # noqa: E731
        out = jax.lax.map(lambda sg: self.tr._measure(*sg, probe_x), (flat(states), flat(grads)))
        return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)

    def _evaluate(self, states, x, y):
        return self.over_members(self.tr._evaluate, ("member", None, None))(states, x, y)

    def _chunk(self, states, alive, step, lrs, data, length: int):
        tr = self.tr
        n, bs, spe = tr.n_train, tr.batch_size, tr.steps_per_epoch
        epoch0 = step // spe
        epochs = epoch0 + jnp.arange(tr.n_perms)
        keys = states.key[0]  # (S, 2): the data key of each seed (same for every lr)
        perms = jax.vmap(lambda k: jax.vmap(lambda e: bdata.epoch_permutation(k, e, n))(epochs))(
            keys
        )  # (S, n_perms, n)
        # lr per member; the batch per seed, shared by the lrs
        step_all = self.over_members(self._member_step, ("member", "member", "lr", "seed", "seed"))

        def one(carry, _):
            st, ok, t = carry
            e = t // spe - epoch0
            start = (t % spe) * bs
            idx = jax.vmap(lambda p: jax.lax.dynamic_slice(p[e], (start,), (bs,)))(perms)
            x, y = data["train_x"][idx], data["train_y"][idx]
            st, ok, grads, loss, acc = step_all(st, ok, lrs, x, y)
            return (st, ok, t + 1), (loss, acc, grads)

        def no_grads(carry, x):
            carry, (loss, acc, _) = one(carry, x)
            return carry, (loss, acc)

        def interval(carry, _):
            # the probe reads the last step's gradients: the interval's other steps do
            # not output theirs (carrying every member's gradients through the scan
            # costs a transpose of the first-layer kernels at every step)
            carry, (loss, acc) = jax.lax.scan(no_grads, carry, None, length=tr.every - 1)
            carry, (loss1, acc1, grads) = one(carry, None)
            loss = jnp.concatenate([loss, loss1[None]])
            acc = jnp.concatenate([acc, acc1[None]])
            st, ok, t = carry
            res = dict(loss=loss, acc=acc, step=t)
            if tr.probe_device is None:
                res["acts"], res["layers"] = self._measure(st, grads, data["probe_x"])
            else:  # activations later, on the probe device
                layers = self.over_members(tr._measure_layers, ("member", "member"))
                res["layers"] = layers(st, grads)
                res["snaps"] = st.replace(opt_state=None)
            return carry, res

        carry = (states, alive, step)
        (states, alive, _), out = jax.lax.scan(interval, carry, None, length=length // tr.every)
        unit = jax.vmap(tr.schedule)(out["step"])  # (probes,)
        out["lr"] = unit[:, None] * lrs[None, :]  # (probes, L)
        return states, alive, out


def member_view(out: dict, lr_index: int, seed_index: int) -> dict:
    """One member's measurements, shaped as a single run's chunk output."""
    pick = lambda a: a[:, lr_index, seed_index]  # noqa: E731
    return dict(
        loss=out["loss"][:, :, lr_index, seed_index],
        acc=out["acc"][:, :, lr_index, seed_index],
        step=out["step"],
        layers=map_stats(out["layers"], pick),
        lr=out["lr"][:, lr_index],
    ) | ({"acts": map_stats(out["acts"], pick)} if "acts" in out else {})


# --------------------------------------------------------------------------- records


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def member_overrides(
    overrides: list[str], m: Member, lr_swept: bool, seed_swept: bool
) -> list[str]:
    """The overrides a multirun job with this member's settings would have."""
    drop = {"optimizer.lr"} if lr_swept else set()
    drop |= {"seed"} if seed_swept else set()
    out = [
        o for o in overrides
        if not (_key(o) == "sweep" or _key(o).startswith("sweep.") or _key(o) in drop)
    ]  # fmt: skip
    if lr_swept:
        out.append(f"optimizer.lr={m.lr!r}")
    if seed_swept:
        out.append(f"seed={m.seed}")
    return out


def member_config(cfg: DictConfig, m: Member) -> DictConfig:
    """The single-run config of a member (``sweep`` emptied)."""
    c = copy.deepcopy(cfg)
    c.optimizer.lr = m.lr
    c.seed = m.seed
    c.sweep.lr = []
    c.sweep.seeds = 0
    return c


def _write_hydra_files(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, d / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), d / "overrides.yaml")


def _hide_hydra_dir(workdir: Path) -> None:
    """Move the sweep's own ``.hydra/`` aside so ``workdir`` reads as a sweep, not a run."""
    src = workdir / ".hydra"
    if src.is_dir():
        dst = workdir / HIDDEN_HYDRA
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)


# --------------------------------------------------------------------------- the loop


def train_sweep(
    cfg: DictConfig,
    workdir: str | Path,
    overrides: list[str] | None = None,
    t0: float | None = None,
) -> list[dict[str, Any]]:
    """Train every member of ``cfg.sweep`` in one program; returns their summaries.

    ``overrides`` are the command line's (Hydra's ``overrides.task``); each member's
    ``.hydra/overrides.yaml`` is them with ``sweep.*`` replaced by its own settings.
    ``t0`` (a ``time.perf_counter()`` reading) is when the process started: the
    summaries' ``first_chunk_s`` counts from it (None: from this call).
    """
    t0 = time.perf_counter() if t0 is None else t0
    workdir = Path(workdir)
    lrs, seeds, ms = members(cfg)
    lr_swept, seed_swept = bool(len(cfg.sweep.lr)), bool(cfg.sweep.seeds)
    if OmegaConf.select(cfg, "parallel.data", default=1) not in (1, None):
        raise UserError("a vectorized sweep runs on one device: use parallel.data=1")
    if OmegaConf.select(cfg, "probe.ics_every", default=0):
        raise UserError(
            "probe.ics_every is not available in a vectorized sweep (sweep.lr/sweep.seeds); "
            "sweep with -m (Hydra multirun) instead"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    _hide_hydra_dir(workdir)
    records = [RunRecord(workdir / str(m.index)) for m in ms]
    for m, rec in zip(ms, records, strict=True):
        _write_hydra_files(
            rec.dir, member_config(cfg, m),
            member_overrides(list(overrides or []), m, lr_swept, seed_swept),
        )  # fmt: skip
    M = len(ms)
    summaries: list[dict[str, Any] | None] = [None] * M
    if cfg.resume:
        for i, rec in enumerate(records):
            prev = rec.read_summary()
            if prev and prev["status"] in ("finished", "diverged"):
                summaries[i] = prev
    if all(s is not None for s in summaries):
        say(f"sweep already done ({M} members); records: {workdir}/<member>")
        return summaries  # type: ignore[return-value]

    ds = host.load_data(cfg)
    say(f"vectorized sweep: {M} members ({len(lrs)} lr x {len(seeds)} seed) in one program")
    try:
        model = loop.make_model(cfg.model, cfg.norm, ds.num_classes)
        unit_opt = OmegaConf.merge(cfg.optimizer, {"lr": 1.0})
        tx, schedule = loop.make_optimizer(unit_opt, cfg.steps)
        trainer = loop.Trainer(
            model, tx, schedule, ds,
            batch_size=cfg.batch_size, chunk_steps=cfg.chunk_steps, probe_cfg=cfg.probe,
            probe_device=parallel.probe_device(cfg.probe.overlap, 1),
        )  # fmt: skip
        lengths = host.chunk_lengths(cfg.steps, cfg.chunk_steps, cfg.probe.every)
        vt = SweepTrainer(trainer, lrs, len(seeds), cfg.diverge_loss)
        states = vt.init(seeds)
    except ValueError as e:
        raise UserError(str(e)) from None

    pending = [i for i in range(M) if summaries[i] is None]
    ckpts = {i: Checkpoints(records[i].checkpoint_dir) for i in pending}
    resumed = _resume(cfg, vt, states, ckpts, records, pending)
    if resumed is None:
        start = 0
        for i in pending:  # a fresh record (a partial one from an earlier try is replaced)
            records[i] = RunRecord(records[i].dir)
        acts, layers = jax.device_get(vt.measure(states))
        loss, acc = jax.device_get(vt.evaluate(states))
        for i in pending:
            ix = divmod(i, vt.S)
            pick = lambda v, ix=ix: v[ix]  # noqa: E731
            probe_rows(
                records[i], np.array([0]), map_stats(acts, pick),
                map_stats(layers, pick),
            )  # fmt: skip
            eval_rows(records[i], 0, loss[ix], acc[ix])
    else:
        start, states = resumed
        say(f"resumed {len(pending)} members from their checkpoints at step {start}")

    base = dict(
        status="running", step=start, steps=cfg.steps, diverged_at=None, final={},
        steps_per_sec=None, wall_time_s=None, first_chunk_s=None,
        devices=1, platform=jax.default_backend(), data_source=ds.source,
        probe_device=None if trainer.probe_device is None else str(trainer.probe_device),
    )  # fmt: skip
    sums: dict[int, dict[str, Any]] = {i: dict(base) for i in pending}
    for i in pending:
        records[i].write_summary(**sums[i])
    alive = np.zeros((vt.L, vt.S), bool)
    for i in pending:
        alive[divmod(i, vt.S)] = True

    signal.signal(signal.SIGTERM, host.on_sigterm)
    t_start, t_steady, steady_steps, first_chunk_s = time.perf_counter(), None, 0, None
    done_chunks = start // cfg.chunk_steps
    step = start
    running = list(pending)

    def finish(i: int, status: str, at_step: int) -> None:
        now = time.perf_counter()
        s = sums[i]
        s.update(status=status, step=at_step, first_chunk_s=first_chunk_s)
        s["wall_time_s"] = round(now - t_start, 3)
        if t_steady is not None and now > t_steady:
            s["steps_per_sec"] = round(steady_steps / (now - t_steady), 1)
        elif s["wall_time_s"]:
            s["steps_per_sec"] = round((at_step - start) / s["wall_time_s"], 1)
        s["final"] = dict(records[i].last)
        records[i].write_tables()
        records[i].write_summary(**s)

    probed = None  # the last chunk's activation probes: (steps, acts, {member: keep})

    def flush() -> None:  # record them (waits for the probe device if it is behind)
        nonlocal probed
        if probed is not None:
            steps, acts, keeps = probed
            acts = jax.device_get(acts)
            for i, keep in keeps.items():
                lr_i, seed_i = divmod(i, vt.S)
                member = map_stats(acts, lambda v, a=lr_i, b=seed_i: v[:, a, b])
                activation_rows(records[i], steps, member, keep)
            probed = None

    bar = host.progress_bar(cfg, start)
    try:
        for c, length in enumerate(lengths[done_chunks:], done_chunks + 1):
            if not running:
                break
            t_chunk = time.perf_counter()
            states, _, out = vt.chunk(states, alive, step, length)
            acts = out.pop("acts")  # with a probe device: alongside the next chunk
            out = jax.device_get(out)
            flush()
            keeps = {}
            if first_chunk_s is None:
                first_chunk_s = round(time.perf_counter() - t0, 3)
            elif t_steady is None:
                t_steady = t_chunk
            if t_steady is not None:
                steady_steps += length
            for i in list(running):
                ix = divmod(i, vt.S)
                view = member_view(out, *ix)
                losses = view["loss"].reshape(-1)
                bad = np.flatnonzero(~(np.abs(losses) <= cfg.diverge_loss))  # NaN counts too
                if bad.size:
                    at = step + int(bad[0]) + 1
                    sums[i]["diverged_at"] = at
                    keeps[i] = view["step"] < at
                    chunk_rows(records[i], view, keep=keeps[i])
                    probed = (out["step"], acts, {i: keeps[i]})
                    flush()
                    finish(i, "diverged", at)
                    running.remove(i)
                    alive[ix] = False
                    say(f"member {i} (lr {ms[i].lr:g}, seed {ms[i].seed}) diverged at step {at}")
                    continue
                chunk_rows(records[i], view)
                keeps[i] = np.ones(out["step"].shape, bool)
            probed = (out["step"], acts, {i: keeps[i] for i in running})
            step += length
            if running and (
                step // cfg.eval_every > (step - length) // cfg.eval_every or c == len(lengths)
            ):
                loss, acc = jax.device_get(vt.evaluate(states))
                for i in running:
                    ix = divmod(i, vt.S)
                    eval_rows(records[i], step, loss[ix], acc[ix])
            bar.update(length)
            if running and (c % cfg.checkpoint_every == 0 or c == len(lengths)):
                flush()
                for i in running:
                    records[i].write_tables()
                    ckpts[i].save(vt.member(states, i), step)
                    records[i].write_summary(**{**sums[i], "step": step})
        flush()
        for i in running:
            finish(i, "finished", step)
    except KeyboardInterrupt:
        flush()
        for i in running:
            try:
                ckpts[i].save(vt.member(states, i), step)
            except Exception:  # state buffers donated to the interrupted chunk
                pass
            finish(i, "interrupted", step)
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for ck in ckpts.values():
            ck.close()
    for i in pending:
        summaries[i] = sums[i]
    if cfg.figure:
        for i in pending:
            if sums[i]["status"] != "interrupted":
                host.save_figures(records[i].dir)
    return summaries  # type: ignore[return-value]


def _resume(cfg, vt: SweepTrainer, states, ckpts, records, pending):
    """``(step, states)`` restored from the members' last common checkpoint, or None."""
    if not cfg.resume or not pending:
        return None
    latest = [ckpts[i].latest_step() for i in pending]
    if any(s is None for s in latest):
        return None
    start = min(latest)
    restored = [vt.member(states, i) for i in range(vt.L * vt.S)]
    try:
        for i in pending:
            restored[i] = ckpts[i].restore(restored[i], start)
    except Exception as e:
        say(f"could not resume at step {start} ({type(e).__name__}); starting over")
        return None
    for i in pending:
        records[i].truncate(start)
    return start, vt.stack(restored)


def main(
    cfg: DictConfig, workdir: str | Path, overrides: list[str] | None, t0: float | None = None
) -> float:
    """The ``python -m bnlab.train sweep.lr=[...]`` entry: train, report, summarize.

    ``t0``: as for :func:`train_sweep`. Returns the best final test accuracy of the
    members that finished, or 0.0 if none did (as a diverged single run: a number
    Hydra's sweepers can rank).
    """
    workdir = Path(workdir)
    summaries = train_sweep(cfg, workdir, overrides, t0=t0)
    statuses = [s["status"] for s in summaries]
    counts = ", ".join(f"{statuses.count(k)} {k}" for k in dict.fromkeys(statuses))
    say(f"sweep of {len(summaries)} members: {counts}; records: {workdir}/<member>")
    try:
        from bnlab import report

        paths = report.write_summary(workdir, figures=bool(cfg.figure))
        say(f"sweep summary: {paths[0]}")
    except Exception as e:  # the summary must never cost the sweep its records
        say(f"no sweep summary ({type(e).__name__}: {e})")
    if "interrupted" in statuses:
        say(f"interrupted; resume with hydra.run.dir={workdir}")
        sys.exit(130)
    accs = [
        s["final"].get("test_accuracy")
        for s in summaries
        if s["status"] == "finished" and s["final"].get("test_accuracy") is not None
    ]
    return max(accs, default=0.0)
