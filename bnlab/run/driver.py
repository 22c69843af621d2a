"""The host loop every run goes through: a single run, a sweep, one device or many.

:func:`train_and_evaluate` checks the config and the run directory (:mod:`bnlab.record.guard`),
loads the data, builds the engine (:mod:`bnlab.run.build`) and drives its compiled chunks,
writing one record per member (:mod:`bnlab.record.tables`). Between chunks the host reads
the losses (per-member divergence) and records the chunk's rows while the next chunk
runs: once the chunk length is known, the next chunk is launched before this one is
done (on its output, which it donates; the host reads a copy), so the device never
waits for the host. Activation probes and evaluations run beside training on the probe
device and are read one chunk later. With ``chunk_steps=auto`` the first two chunks are
one probe interval each, the second timed (a program's first run is slower), and the
rest are the largest that run in about :data:`~bnlab.run.pacing.CHUNK_SECONDS`.

Commit order: a checkpoint at step s is written only after every row up to s is in
the tables on disk, its checksums (its files, the tables' rows up to s) after it, and
the summary last; a resume starts from the newest checkpoint that verifies and whose
tables match it (:mod:`bnlab.run.restore`), the tables truncated to it. SIGINT and SIGTERM ask the loop to stop after the current
chunk: it records the chunk, commits it and exits 130; a signal during the commit
waits for it, and a second one while a chunk runs stops at once (the last commit
stands). A run whose last step is done is ``finished`` whatever signal comes. A run's figures are part of its completion: a finished run without them
draws them when run again.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bnlab import config, data, loggers
from bnlab.config import TrainConfig, validate
from bnlab.engine.chunk import Engine
from bnlab.engine.loss import has_classes
from bnlab.engine.step import TrainState, unstack
from bnlab.errors import UserError, say
from bnlab.models import check_model
from bnlab.record import guard, members
from bnlab.record.checkpoint import Checkpoints
from bnlab.record.tables import RunRecord, activation_rows, eval_rows, metrics_rows
from bnlab.run import session
from bnlab.run.build import build_engine, data_settings, load_data
from bnlab.run.pacing import auto_chunk, keep_saved_intervals, progress_bar
from bnlab.run.restore import digests, ended, read_summary, resume_point


def train_and_evaluate(
    cfg: Any, workdir: str | Path, overrides: list[str] | None = None, *,
    hydra_cfg: Any = None, t0: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train per ``cfg`` (a composed config or a :class:`~bnlab.config.TrainConfig`),
    writing the run record(s) into ``workdir``; returns one summary per member.

    ``overrides`` are the command line's (for the ``.hydra/overrides.yaml`` files);
    ``t0`` (a ``time.perf_counter()`` reading) is when the process started, from
    which ``first_chunk_s`` counts. Raises :class:`~bnlab.errors.UserError`.
    """
    t0 = time.perf_counter() if t0 is None else t0
    composed, cfg = cfg, config.typed(cfg)
    if composed is not cfg:  # a key the schema would drop (+new.key=...) is refused
        config.check_unknown(composed, cfg)
    if cfg.resume.enabled:  # auto intervals as the record they continue has them
        keep_saved_intervals(cfg, guard.saved_config_path(cfg, Path(workdir)))
    data_dev, mem_dev = config.check(cfg, jax.local_device_count())
    config.check_overrides(cfg, list(overrides or []))
    check_model(cfg.model, cfg.import_path)
    data.check_settings(**data_settings(cfg))
    loggers.check(cfg)  # loggers (issue 16)
    workdir = Path(workdir)
    ms = members.members(cfg, workdir)
    if cfg.resume.enabled:  # read-only: a refused command touches nothing
        guard.check_saved_config(cfg, workdir)
    with guard.RunLock(workdir):
        records = [RunRecord(m.dir) for m in ms]
        previous = [read_summary(r) if cfg.resume.enabled else None for r in records]
        if all(ended(p, cfg.steps) for p in previous):
            what = "sweep already done" if cfg.is_sweep else f"run already {previous[0]['status']}"
            say(f"{what}; record: {workdir}")
            session.complete(cfg, workdir, records, previous)  # type: ignore[arg-type]
            return previous  # type: ignore[return-value]
        # only a run that trains: a process that ends at once while the thread is still
        # importing orbax can abort at exit ("terminate called without an active exception")
        session.preload()
        if cfg.resume.enabled:  # no going back: a record further along is refused
            guard.check_steps(cfg, [m.dir for m, p in zip(ms, previous, strict=True)
                                    if not ended(p, cfg.steps)])  # fmt: skip
        ds = load_data(cfg)
        config.check_data(cfg, len(ds.train_y), len(ds.probe_x), ds.train_x.ndim)
        engine = build_engine(cfg, ds, data_dev, mem_dev)  # the model's errors, before any file
        ranked = validate.objective(cfg.objective, has_classes(ds.train_y), len(ds.val_y) > 0)
        try:
            if not cfg.resume.enabled:  # starting over: the old record is moved aside
                guard.set_aside_record(workdir)
            members.write_hydra_files(cfg, workdir, ms, list(overrides or []), hydra_cfg)
        except OSError as e:
            raise UserError(guard.write_problem(workdir, e)) from None
        if cfg.is_sweep:
            say(f"vectorized sweep: {len(ms)} members ({len(cfg.lrs)} lr x "
                f"{len(cfg.seeds)} seed) in one program on {data_dev * mem_dev} device(s)")  # fmt: skip
        loop = Loop(cfg, engine, ms, records, previous, t0)
        lay = engine.learner.probe_net.layout  # the sites in call order: the figures' order
        sites = [s for s in lay.sites if not lay.selected or s in lay.selected]
        loop.base.update(devices=data_dev * mem_dev, data_source=ds.source, sites=sites,
                         objective=ranked)  # fmt: skip
        loop.loggers = loggers.Loggers.create(cfg, ms, workdir, hydra_cfg)
        summaries = loop.run()
        if cfg.is_sweep and (workdir / "summary.csv").exists():
            (workdir / "summary.csv").unlink()  # stale: the sweep moved on
        session.complete(cfg, workdir, records, summaries)
    return summaries


class Loop:
    """The host side of one run's training: records, checkpoints, signals, progress."""

    def __init__(self, cfg: TrainConfig, engine: Engine, ms: list[members.Member],
                 records: list[RunRecord], previous: list, t0: float):  # fmt: skip
        self.cfg, self.engine, self.ms, self.t0 = cfg, engine, ms, t0
        self.records = records
        self.done = [ended(p, cfg.steps) for p in previous]
        self.sums: list[dict[str, Any]] = [
            p if d else {} for p, d in zip(previous, self.done, strict=True)
        ]
        self.running = [i for i, d in enumerate(self.done) if not d]
        self.ckpts: dict[int, Checkpoints] = {}
        for i in self.running:
            guard.remove_orbax_temp(records[i].checkpoint_dir)
            self.ckpts[i] = Checkpoints(records[i].checkpoint_dir)
        self.base: dict[str, Any] = dict(
            status="running", steps=cfg.steps, diverged_at=None, diverge_reason=None,
            final={}, steps_per_sec=None, wall_time_s=None, first_chunk_s=None,
            compile_s=0.0, chunk_steps=None, platform=jax.default_backend(),
            probe_device=None if engine.probe_device is None else str(engine.probe_device),
        )  # fmt: skip
        self.stop_requested = self.committing = self.closing = False
        self.pending: tuple | None = None  # a chunk's probes and evaluation, maybe still running
        self.t_start, self.start = 0.0, 0
        self.compiling = 0.0  # seconds spent compiling after the loop started
        self.chunk = None if cfg.chunk_steps == "auto" else int(cfg.chunk_steps)
        self.ran = 0  # the longest chunk that ran: the summary's chunk_steps
        self.loggers = loggers.Loggers()  # none unless set

    # -- signals ---------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stop_requested:
            say("stop requested: finishing this chunk, then saving")
            self.stop_requested = True
        elif not (self.committing or self.closing):  # a second one while a chunk runs: now
            raise KeyboardInterrupt

    # -- states ----------------------------------------------------------------------
    def _start(self) -> tuple[int, TrainState]:
        """The step to start from and the member states (restored or fresh)."""
        e, cfg = self.engine, self.cfg
        states = e.init([m.seed for m in self.ms], [m.lr for m in self.ms],
                        e.data["train_x"][:2])  # fmt: skip
        restored = resume_point(self, states) if cfg.resume.enabled else None
        if restored is not None:
            self._compile(restored[1], self._next_length(restored[0]))
            return restored
        self._compile(states, self._next_length(0))
        for i in self.running:  # a fresh record (what an earlier try left is replaced)
            self.ckpts[i].drop_after(-1, self.records[i].dir)
            self.records[i] = RunRecord(self.records[i].dir)
        first = jax.device_get(e.measure(states))
        for i in self.running:
            metrics_rows(self.records[i], first.member(i))
        self._eval_rows(0, jax.device_get(e.evaluate(states)), self.running)
        return 0, states

    # -- the loop --------------------------------------------------------------------
    def _next_length(self, step: int) -> int:
        """The next chunk: up to the next multiple of the chunk length (one probe
        interval while unaligned or calibrating), never past ``steps``."""
        every = self.cfg.probe.every
        n = self.chunk or every
        n = n if step % n == 0 else every
        return min(n, self.cfg.steps - step)

    def _compile(self, states: TrainState, length: int, bar: Any = None) -> float:
        """Compile the chunk of ``length`` steps if it is new; returns the seconds spent."""
        if self.engine.compiled(length):
            return 0.0
        tell = bar.write if bar is not None else lambda m: say(m.removeprefix("bnlab: "))
        tell(f"bnlab: compiling a chunk of {length} steps")
        seconds = self.engine.compile(states, [length])
        self.base["compile_s"] = round(self.base["compile_s"] + seconds, 3)
        tell(f"bnlab: compiled in {seconds:.1f} s")
        if bar is not None:
            bar.unpause()  # the bar's rate leaves compilation out
        return seconds

    def _launch(self, live: TrainState, step: int, bar: Any) -> tuple:
        """Launch the next chunk from ``step`` on ``live`` (donated):
        ``((states, metrics) futures, length, launch time)``."""
        n = self._next_length(step)
        self.compiling += self._compile(live, n, bar)
        return self.engine.chunk(live, step, n), n, time.perf_counter()

    def run(self) -> list[dict[str, Any]]:
        cfg, e = self.cfg, self.engine
        self.start, states = self._start()
        step = self.start
        self.loggers.begin(step, e, e.keep(states), self.done)  # loggers (issue 16)
        for i in self.running:
            self.sums[i] = dict(self.base, step=step)
            self.records[i].write_summary(**self.sums[i])
        old = [signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)]
        bar = progress_bar(cfg, step)
        self.t_start, ahead, self.saved_at = time.perf_counter(), None, step
        host = jax.device_get(states)  # the state at `step`: what an interrupt checkpoints
        live = states  # what the next chunk starts from (and donates); the host reads copies
        due = None  # a commit (state, step) put off by one chunk
        try:
            while step < cfg.steps and self.running and not self.stop_requested:
                if ahead is None:  # nothing in flight: the first chunk, or one while calibrating
                    ahead = self._launch(live, step, bar)
                (live, metrics), length, t_launch = ahead
                ahead, end = None, step + length
                states = e.keep(live)  # the state at `end`, for evaluation and checkpoints
                # asked for now, before the next chunk's probes: the probe device runs in order
                evaluated = end % cfg.eval_every == 0 or end == cfg.steps
                evals = e.evaluate(states) if evaluated else None
                self.loggers.request(end, e, states)  # loggers (issue 16): histograms
                if self.chunk is not None and end < cfg.steps and not self.stop_requested:
                    # the next chunk goes now, before this one is done: the device never
                    # waits for the host to wake up
                    ahead = self._launch(live, end, bar)
                got = jax.device_get(metrics.replace(acts=None))  # waits for the chunk
                if self.base["first_chunk_s"] is None:
                    self.base["first_chunk_s"] = round(time.perf_counter() - self.t0, 3)
                # calibrated on the second interval: a program's first run is slower (9 ms
                # a step against 0.4)
                if self.chunk is None and step > self.start:
                    self.chunk = auto_chunk((time.perf_counter() - t_launch) / length,
                                            cfg.probe.every, cfg)  # fmt: skip
                keeps, diverged = self._divergence(got.loss, got.step, step)
                step = end
                host = jax.device_get(states)
                last = step == cfg.steps
                if ahead is None and not last and self.running and not self.stop_requested:
                    ahead = self._launch(live, step, bar)  # overlaps what follows
                self._flush()  # the last chunk's probes: done by now
                if due is not None:  # every row up to its step is on disk with them
                    self._commit(*due)
                    due = None
                for i, keep in keeps.items():
                    metrics_rows(self.records[i], got.member(i), keep)
                # read at the next flush: the probe device may still be computing them
                self.pending = (metrics.step, metrics.acts, keeps, step, evals, list(self.running))
                # loggers (issue 16): the chunk's rows, and the histograms that are done
                self.loggers.write(self.records, ready_only=ahead is not None)
                if diverged:
                    self._flush()
                    for i, at in diverged:
                        self._finish(i, "diverged", at)
                self.ran = max(self.ran, length)
                bar.update(length)
                bar.set_postfix(self._postfix(), refresh=False)
                if self.running and (step % cfg.checkpoint_every == 0 or last):
                    if ahead is None:  # nothing runs beside: now
                        self._commit(host, step)
                    else:  # after the next chunk, when this one's probes are done
                        due = host, step
            self.closing = True  # a second signal now waits for the record
            if self.running and step >= cfg.steps:  # every step done: finished, signal or not
                self._flush()
                for i in list(self.running):
                    self._finish(i, "finished", step)
            elif self.running:  # stopped early: commit what is recorded
                self._commit(host, step)
                for i in list(self.running):
                    self._finish(i, "interrupted", step)
        except KeyboardInterrupt:  # stopped at once: the last commit stands
            for i in list(self.running):
                if self.saved_at >= cfg.steps:  # the last step was committed: finished
                    self._finish(i, "finished", self.saved_at)
                else:  # steps are missing
                    self.sums[i].update(status="interrupted", step=self.saved_at)
                    self.records[i].write_summary(**self.sums[i])
        except OSError as e:
            raise UserError(guard.write_problem(self.records[self.running[0]].dir, e)) from None
        finally:
            self.loggers.close_all(self.records, self.sums)  # loggers (issue 16)
            bar.close()
            for s, h in zip((signal.SIGINT, signal.SIGTERM), old, strict=True):
                signal.signal(s, h)
            for ck in self.ckpts.values():
                ck.close()
        return self.sums

    def _eval_rows(self, step: int, evals: dict, who: list[int]) -> None:
        for i in who:
            for split, (loss, acc) in evals.items():
                eval_rows(self.records[i], step, split, loss[i], acc[i])

    def _divergence(self, losses: np.ndarray, probe_steps: np.ndarray, step: int):
        """The probes to keep per running member, and the members whose loss went bad
        in this chunk (``(member, step)``); their rows stop before that step."""
        keeps, diverged = {}, []
        for i in list(self.running):
            flat = losses[i].reshape(-1)
            bad = np.flatnonzero(~(np.abs(flat) <= self.cfg.diverge_loss))  # NaN counts too
            keeps[i] = np.ones(probe_steps.shape, bool)
            if bad.size:
                at = step + int(bad[0]) + 1
                reason = "loss_above_limit" if np.isfinite(flat[bad[0]]) else "nonfinite"
                keeps[i] = probe_steps < at
                self.sums[i].update(diverged_at=at, diverge_reason=reason)
                self.running.remove(i)
                diverged.append((i, at))
                if len(self.ms) > 1:
                    m = self.ms[i]
                    say(f"member {i} (lr {m.lr:g}, seed {m.seed}) diverged at step {at} ({reason})")
        return keeps, diverged

    def _flush(self) -> None:
        """Record the last chunk's activation probes and its evaluation (``who``: the
        members running when it was asked for); waits for the probe device."""
        if self.pending is None:
            return
        steps, acts, keeps, at, evals, who = self.pending
        self.pending = None
        if acts is not None:
            acts, steps = jax.device_get((acts, steps))
            for i, keep in keeps.items():
                mine = jax.tree.map(lambda a, i=i: np.asarray(a)[i], acts)
                activation_rows(self.records[i], np.asarray(steps), mine, keep)
        if evals is not None:
            self._eval_rows(at, jax.device_get(evals), who)

    def _commit(self, host: TrainState, step: int) -> None:
        """Every row up to ``step`` on disk, then the checkpoints, then the summaries."""
        self.committing = True
        try:
            self._flush()
            frames = {i: self.records[i].write_tables() for i in self.running}
            for i in self.running:
                self.ckpts[i].save(unstack(host, i), step, digests(frames[i], step))
            for i in self.running:
                self.sums[i].update(step=step, compile_s=self.base["compile_s"],
                                    chunk_steps=self.ran or None)  # fmt: skip
                self.records[i].write_summary(**self.sums[i])
            self.saved_at = step  # what a second signal leaves: the record up to here
        finally:
            self.committing = False

    def _finish(self, i: int, status: str, step: int) -> None:
        """Member ``i``'s record is complete: its tables and final summary."""
        s, now = self.sums[i], time.perf_counter()
        s.update(
            status=status,
            step=step,
            first_chunk_s=self.base["first_chunk_s"],
            compile_s=self.base["compile_s"],
            chunk_steps=self.ran or None,
            wall_time_s=round(now - self.t0, 3),
        )  # from t0: start-up included
        trained = now - self.t_start - self.compiling
        if step > self.start and trained > 0:  # the steady rate: compilation left out
            s["steps_per_sec"] = round((step - self.start) / trained, 1)
        s["final"] = dict(self.records[i].last)
        self.records[i].write_tables()
        self.records[i].write_summary(**s)
        self.loggers.close(i, self.records[i], s)  # loggers (issue 16)
        if i in self.running:
            self.running.remove(i)

    def _postfix(self) -> dict[str, str]:
        if not self.running:
            return {}
        last = dict(self.records[self.running[0]].last)
        keys = (("loss", "train_loss"), ("acc", "train_accuracy"), ("test_acc", "test_accuracy"))
        return {k: f"{last[n]:.4f}" for k, n in keys if n in last}
