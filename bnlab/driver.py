"""The host loop every run goes through: a single run, a sweep, one device or many.

:func:`train_and_evaluate` checks the config, loads the data, builds the engine
(:mod:`bnlab.engine`) and drives its compiled chunks, writing one record per member
(:mod:`bnlab.record`). Between chunks the host reads the losses (per-member
divergence), dispatches the next chunk at once, and only then records this one's
rows and evaluates beside training, so its work overlaps the device's.

Commit order: a checkpoint at step s is written only after every row up to s is in
the tables on disk; a resume truncates the tables to its checkpoint. SIGINT and
SIGTERM ask the loop to stop after the current chunk: it records the chunk, commits
it and exits 130; a second signal during the commit waits for it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bnlab import config, data, devices, members
from bnlab.build import build_engine
from bnlab.checkpoint import Checkpoints
from bnlab.config import TrainConfig
from bnlab.engine import Engine
from bnlab.errors import say
from bnlab.models import check_model
from bnlab.record import RunRecord, activation_rows, eval_rows, metrics_rows
from bnlab.step import TrainState, stack, unstack

DONE = ("finished", "diverged")


def setup_process(cfg: Any) -> None:
    """Process-wide settings a run needs before JAX starts its backends."""
    import logging

    logging.getLogger("jax").setLevel(logging.WARNING)  # backend-probing chatter
    if cfg.compile_cache:  # re-runs of a config skip most of XLA's compile time
        jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if cfg.probe.overlap and cfg.parallel.data == 1 and cfg.parallel.members == 1:
        devices.request_cpu_devices(2)  # a probe device beside the training one


def report(summaries: list[dict[str, Any]], workdir: str | Path) -> float:
    """Say how the run ended; exit 130 if interrupted. Returns what Hydra's sweepers
    rank: the best final test accuracy, 0.0 when no member finished (never None)."""
    import sys

    statuses = [s["status"] for s in summaries]
    if len(summaries) > 1:
        counts = ", ".join(f"{statuses.count(k)} {k}" for k in dict.fromkeys(statuses))
        say(f"sweep of {len(summaries)} members: {counts}; records: {workdir}/<member>")
    else:
        s = summaries[0]
        acc = s["final"].get("test_accuracy")
        if s["status"] == "diverged":
            say(
                f"diverged at step {s['diverged_at']} ({s.get('diverge_reason')}); record: {workdir}"
            )
        elif s["status"] == "finished":
            rate = s.get("steps_per_sec")
            say(f"finished {s['step']} steps" + (f" ({rate:.0f} steps/s)" if rate else "")
                + (f", test accuracy {acc:.4f}" if acc is not None else "") + f"; record: {workdir}")  # fmt: skip
    if "interrupted" in statuses:
        step = min(s["step"] for s in summaries if s["status"] == "interrupted")
        say(f"interrupted at step {step}; resume with hydra.run.dir={workdir}")
        sys.exit(130)
    accs = [s["final"].get("test_accuracy") for s in summaries if s["status"] == "finished"]
    return max((a for a in accs if a is not None), default=0.0)


def chunk_lengths(steps: int, chunk_steps: int) -> list[int]:
    """The lengths of the compiled chunks that make ``steps`` (the last may be shorter)."""
    full, rest = divmod(steps, chunk_steps)
    return [chunk_steps] * full + ([rest] if rest else [])


def data_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.data`` as :func:`bnlab.data.load` takes it (choices as their names)."""
    return {k: str(v) if isinstance(v, config.Choice) else v for k, v in vars(cfg.data).items()}


def load_data(cfg: TrainConfig) -> data.Dataset:
    """The dataset of ``cfg.data``, announced in one line."""
    ds = data.load(**data_settings(cfg))
    val = f" / {len(ds.val_y)} validation" if len(ds.val_y) else ""
    say(
        f"data {ds.name}: {len(ds.train_y)} train / {len(ds.test_y)} test{val}, "
        f"probe batch {len(ds.probe_x)}; from {ds.source}"
    )
    return ds


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
    cfg = config.typed(cfg)
    data_dev, mem_dev = config.check(cfg, jax.local_device_count())
    check_model(cfg.model, cfg.import_path)
    data.check_settings(**data_settings(cfg))
    workdir = Path(workdir)
    ms = members.members(cfg, workdir)
    records = [RunRecord(m.dir) for m in ms]
    previous = [r.read_summary() if cfg.resume else None for r in records]
    if all(p and p["status"] in DONE for p in previous):
        what = "sweep already done" if cfg.is_sweep else f"run already {previous[0]['status']}"
        say(f"{what}; record: {workdir}")
        return previous  # type: ignore[return-value]
    ds = load_data(cfg)
    config.check_data(cfg, len(ds.train_y), len(ds.probe_x), ds.train_x.ndim)
    engine = build_engine(cfg, ds, data_dev, mem_dev)  # the model's errors, before any file
    members.write_hydra_files(cfg, workdir, ms, list(overrides or []), hydra_cfg)
    if cfg.is_sweep:
        say(f"vectorized sweep: {len(ms)} members ({len(cfg.lrs)} lr x {len(cfg.seeds)} seed)"
            f" in one program on {data_dev * mem_dev} device(s)")  # fmt: skip
    loop = Loop(cfg, engine, ms, records, previous, t0)
    loop.base.update(devices=data_dev * mem_dev, data_source=ds.source)
    summaries = loop.run()
    if cfg.is_sweep:
        _sweep_summary(workdir, figures=cfg.figure)
    return summaries


class Loop:
    """The host side of one run's training: records, checkpoints, signals, progress."""

    def __init__(self, cfg: TrainConfig, engine: Engine, ms: list[members.Member],
                 records: list[RunRecord], previous: list, t0: float):  # fmt: skip
        self.cfg, self.engine, self.ms, self.t0 = cfg, engine, ms, t0
        self.records = records
        self.done = [bool(p and p["status"] in DONE) for p in previous]
        self.sums: list[dict[str, Any]] = [
            p if d else {} for p, d in zip(previous, self.done, strict=True)
        ]
        self.running = [i for i, d in enumerate(self.done) if not d]
        self.ckpts = {i: Checkpoints(records[i].checkpoint_dir) for i in self.running}
        self.base: dict[str, Any] = dict(
            status="running", steps=cfg.steps, diverged_at=None, diverge_reason=None,
            final={}, steps_per_sec=None, wall_time_s=None, first_chunk_s=None,
            platform=jax.default_backend(),
            probe_device=None if engine.probe_device is None else str(engine.probe_device),
        )  # fmt: skip
        self.stop_requested = self.committing = False
        self.pending: tuple | None = None  # a chunk's activation probes, maybe still running
        self.t_start = self.t_steady = None
        self.start = self.steady_steps = 0

    # -- signals ---------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stop_requested:
            say("stop requested: finishing this chunk, then saving")
            self.stop_requested = True
        elif not self.committing:  # a second signal while waiting for a chunk: abort
            raise KeyboardInterrupt

    # -- states ----------------------------------------------------------------------
    def _start(self) -> tuple[int, TrainState]:
        """The step to start from and the member states (restored or fresh)."""
        e, cfg = self.engine, self.cfg
        states = e.init([m.seed for m in self.ms], [m.lr for m in self.ms],
                        e.data["train_x"][:2])  # fmt: skip
        latest = [self.ckpts[i].latest_step() for i in self.running] if cfg.resume else [None]
        if all(s is not None for s in latest):
            start = min(latest)  # type: ignore[type-var]
            members = [unstack(states, i) for i in range(len(self.ms))]
            for i in self.running:
                members[i] = self.ckpts[i].restore(members[i], start)
                self.records[i].truncate(start)
            for i, d in enumerate(self.done):
                if d:  # a finished or diverged member of a sweep stays as it is
                    members[i] = members[i].replace(alive=np.zeros((), bool))
            say(f"resumed from the checkpoint at step {start}")
            return start, e.place_states(stack(members))
        for i in self.running:
            self.records[i] = RunRecord(self.records[i].dir)  # a fresh record
        first = jax.device_get(e.measure(states))
        evals = jax.device_get(e.evaluate(states))
        for i in self.running:
            metrics_rows(self.records[i], first.member(i))
        self._eval_rows(0, evals)
        return 0, states

    # -- the loop --------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        cfg, e = self.cfg, self.engine
        self.start, states = self._start()
        step = self.start
        for i in self.running:
            self.sums[i] = dict(self.base, step=step)
            self.records[i].write_summary(**self.sums[i])
        lengths = chunk_lengths(cfg.steps, cfg.chunk_steps)
        done_chunks = step // cfg.chunk_steps
        old = [signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)]
        bar = _progress_bar(cfg, step)
        self.t_start, ahead, saved_at = time.perf_counter(), None, step
        host = jax.device_get(states)  # the state at `step`: what an interrupt checkpoints
        try:
            for c, length in enumerate(lengths[done_chunks:], done_chunks + 1):
                if self.stop_requested or not self.running:
                    break
                states, metrics = ahead or e.chunk(states, step, length)
                ahead = None
                got = jax.device_get(metrics.replace(acts=None))  # waits for the chunk
                self._clock(length)
                keeps, diverged = self._divergence(got.loss, got.step, step)
                step += length
                host = jax.device_get(states)
                last = c == len(lengths)
                due_eval = step % cfg.eval_every == 0 or last
                evals = None
                if due_eval and self.running:
                    evals = e.evaluate(states, beside=True)
                if not last and self.running and not self.stop_requested:
                    ahead = e.chunk(states, step, lengths[c])  # overlaps what follows
                self._flush()
                for i, keep in keeps.items():
                    metrics_rows(self.records[i], got.member(i), keep)
                self.pending = (metrics.step, metrics.acts, keeps)
                if evals is not None:
                    self._eval_rows(step, jax.device_get(evals))
                if diverged:
                    self._flush()
                    for i, at in diverged:
                        self._finish(i, "diverged", at)
                bar.update(length)
                bar.set_postfix(self._postfix(), refresh=False)
                if self.running and (step % cfg.checkpoint_every == 0 or last):
                    self._commit(host, step)
                    saved_at = step
            if self.running:
                if not self.stop_requested:
                    self._flush()
                    for i in list(self.running):
                        self._finish(i, "finished", step)
                else:  # stopped early: commit what is recorded
                    self._commit(host, step)
                    for i in list(self.running):
                        self._finish(i, "interrupted", step)
        except KeyboardInterrupt:  # aborted while waiting: the last commit stands
            for i in self.running:
                self.sums[i].update(status="interrupted", step=saved_at)
                self.records[i].write_summary(**self.sums[i])
        finally:
            bar.close()
            for s, h in zip((signal.SIGINT, signal.SIGTERM), old, strict=True):
                signal.signal(s, h)
            for ck in self.ckpts.values():
                ck.close()
        if cfg.figure:
            for i, s in enumerate(self.sums):
                if s.get("status") in DONE and not self.done[i]:
                    _figures(self.records[i].dir)
        return self.sums

    def _eval_rows(self, step: int, evals: dict) -> None:
        for i in self.running:
            for split, (loss, acc) in evals.items():
                eval_rows(self.records[i], step, split, loss[i], acc[i])

    def _clock(self, length: int) -> None:
        """Time the steady chunks (all but the first, which includes compilation)."""
        if self.base["first_chunk_s"] is None:
            self.base["first_chunk_s"] = round(time.perf_counter() - self.t0, 3)
            self.t_steady = time.perf_counter()
        else:
            self.steady_steps += length

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
        """Record the last chunk's activation probes (waits for the probe device)."""
        if self.pending is None:
            return
        steps, acts, keeps = self.pending
        self.pending = None
        if acts is None:
            return
        acts, steps = jax.device_get((acts, steps))
        for i, keep in keeps.items():
            mine = jax.tree.map(lambda a, i=i: np.asarray(a)[i], acts)
            activation_rows(self.records[i], np.asarray(steps), mine, keep)

    def _commit(self, host: TrainState, step: int) -> None:
        """Every row up to ``step`` on disk, then the checkpoints, then the summaries."""
        self.committing = True
        try:
            self._flush()
            for i in self.running:
                self.records[i].write_tables()
            for i in self.running:
                self.ckpts[i].save(unstack(host, i), step)
            for i in self.running:
                self.sums[i]["step"] = step
                self.records[i].write_summary(**self.sums[i])
        finally:
            self.committing = False

    def _finish(self, i: int, status: str, step: int) -> None:
        """Member ``i``'s record is complete: its tables and final summary."""
        s, now = self.sums[i], time.perf_counter()
        s.update(status=status, step=step, first_chunk_s=self.base["first_chunk_s"])
        s["wall_time_s"] = round(now - self.t_start, 3)
        if self.steady_steps and self.t_steady is not None:
            s["steps_per_sec"] = round(self.steady_steps / (now - self.t_steady), 1)
        elif s["wall_time_s"]:
            s["steps_per_sec"] = round((step - self.start) / s["wall_time_s"], 1)
        s["final"] = dict(self.records[i].last)
        self.records[i].write_tables()
        self.records[i].write_summary(**s)
        if i in self.running:
            self.running.remove(i)

    def _postfix(self) -> dict[str, str]:
        if not self.running:
            return {}
        last = dict(self.records[self.running[0]].last)
        keys = (("loss", "train_loss"), ("acc", "train_accuracy"), ("test_acc", "test_accuracy"))
        return {k: f"{last[n]:.4f}" for k, n in keys if n in last}


def _figures(run_dir: Path) -> None:
    """Draw a run's figures; a failure is one line, never fatal."""
    from bnlab import report

    try:
        report.save_run_figures(run_dir)
    except Exception as e:
        say(f"could not draw the run's figures ({type(e).__name__}: {e})")


def _sweep_summary(workdir: Path, figures: bool) -> None:
    """The sweep's summary table and figures; a failure is one line, never fatal."""
    from bnlab import report

    try:
        paths = report.write_summary(workdir, figures=figures)
        say(f"sweep summary: {paths[0]}")
    except Exception as e:  # the summary must never cost the sweep its records
        say(f"no sweep summary ({type(e).__name__}: {e})")


def _progress_bar(cfg: TrainConfig, initial: int) -> Any:
    """A tqdm bar over ``cfg.steps``; silent with ``progress=false`` or no terminal."""
    import sys

    from tqdm.auto import tqdm

    disable = not cfg.progress or not sys.stderr.isatty()
    return tqdm(total=cfg.steps, initial=initial, unit="step", disable=disable, dynamic_ncols=True)
