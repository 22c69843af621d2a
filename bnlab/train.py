"""``python -m bnlab.train``: train one model and record how every layer moves.

Hydra composes ``configs/train.yaml``; :func:`train_and_evaluate` does the work
and writes the run record (see :mod:`bnlab.record`) into Hydra's output directory.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: time-to-first-chunk counts them

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bnlab import config, loop, parallel  # noqa: E402
from bnlab.checkpoint import Checkpoints  # noqa: E402
from bnlab.console import UserError  # noqa: E402
from bnlab.console import say as _say  # noqa: E402
from bnlab.host import chunk_lengths as _chunk_lengths  # noqa: E402
from bnlab.host import load_data as _load_data  # noqa: E402
from bnlab.host import on_sigterm as _on_sigterm  # noqa: E402
from bnlab.host import progress_bar as _progress  # noqa: E402
from bnlab.host import save_figures as _figures  # noqa: E402
from bnlab.record import RunRecord, activation_rows, eval_rows  # noqa: E402
from bnlab.record import chunk_rows as _chunk_rows  # noqa: E402
from bnlab.record import probe_rows as _probe_rows  # noqa: E402


def train_and_evaluate(cfg: DictConfig, workdir: str | Path) -> dict[str, Any]:
    """Train per ``cfg``, writing the run record into ``workdir``; returns the summary."""
    workdir = Path(workdir)
    record = RunRecord(workdir)
    previous = record.read_summary()
    if cfg.resume and previous and previous["status"] in ("finished", "diverged"):
        _say(f"run already {previous['status']} at step {previous['step']}; record: {workdir}")
        return previous

    ds = _load_data(cfg)
    try:
        devices = parallel.device_count(cfg.parallel.data)
        tx, schedule = loop.make_optimizer(cfg.optimizer, cfg.steps)
        trainer = parallel.make_trainer(
            cfg.model, cfg.norm, ds, tx, schedule, devices=devices,
            batch_size=cfg.batch_size, chunk_steps=cfg.chunk_steps, probe_cfg=cfg.probe,
            probe_device=parallel.probe_device(cfg.probe.overlap, devices),
        )  # fmt: skip
        model = trainer.model
        lengths = _chunk_lengths(cfg.steps, cfg.chunk_steps, cfg.probe.every)
        state = trainer.place(loop.init_state(model, tx, trainer.data["train_x"][:2], cfg.seed))
    except ValueError as e:
        raise UserError(str(e)) from None

    ckpts = Checkpoints(record.checkpoint_dir)
    start = ckpts.latest_step() if cfg.resume else None
    if start is not None:
        state = trainer.place(ckpts.restore(state, start))
        record.truncate(start)
        _say(f"resumed from the checkpoint at step {start}")
    else:
        start = 0
        _probe_rows(record, np.array([0]), *jax.device_get(trainer.measure(state)))
        _eval_rows(record, trainer, state, 0)

    summary: dict[str, Any] = dict(
        status="running", step=start, steps=cfg.steps, diverged_at=None, final={},
        steps_per_sec=None, wall_time_s=None, first_chunk_s=None,
        devices=devices, platform=jax.default_backend(), data_source=ds.source,
        probe_device=None if trainer.probe_device is None else str(trainer.probe_device),
    )  # fmt: skip
    record.write_summary(**summary)
    signal.signal(signal.SIGTERM, _on_sigterm)
    t_start, t_steady, steady_steps = time.perf_counter(), None, 0  # steady: after chunk 1
    done_chunks = start // cfg.chunk_steps
    step = start
    bar = _progress(cfg, start)
    pending = None  # the last chunk's activation probes and steps, maybe still running

    def flush() -> None:  # record them (waits for the probe device if it is behind)
        nonlocal pending
        if pending is not None:
            steps, acts, keep = pending
            activation_rows(record, steps, jax.device_get(acts), keep)
            pending = None

    # The next chunk is dispatched as soon as this one's losses are checked, before its
    # records, evaluation and checkpoint are written: the host's work overlaps training.
    # ``saved`` is the state at ``step`` on the host (the device copy is donated to the
    # next chunk): what checkpoints and an interrupt save.
    saved = jax.device_get(state)
    ahead = None  # the dispatched next chunk: (new state, measurements)
    try:
        for i, length in enumerate(lengths[done_chunks:], done_chunks + 1):
            new_state, out = ahead or trainer.chunk(state, length)
            acts = out.pop("acts")  # with a probe device: computed there, alongside the next chunk
            out = jax.device_get(out)
            if summary["first_chunk_s"] is None:
                summary["first_chunk_s"] = round(time.perf_counter() - _T0, 3)
                t_steady = time.perf_counter()
            else:
                steady_steps += length
            losses = out["loss"].reshape(-1)
            bad = np.flatnonzero(~(np.abs(losses) <= cfg.diverge_loss))  # NaN counts too
            if bad.size:
                flush()
                summary["diverged_at"] = step + int(bad[0]) + 1
                keep = out["step"] < summary["diverged_at"]
                _chunk_rows(record, out, keep=keep)
                pending = (out["step"], acts, keep)
                step = summary["diverged_at"]
                summary["status"] = "diverged"
                break
            state, step = new_state, step + length
            saved = jax.device_get(state)
            due = step // cfg.eval_every > (step - length) // cfg.eval_every or i == len(lengths)
            test = trainer.evaluate_beside(state) if due else None
            ahead = trainer.chunk(state, lengths[i]) if i < len(lengths) else None
            flush()
            _chunk_rows(record, out)
            pending = (out["step"], acts, None)
            if test is not None:
                eval_rows(record, step, *jax.device_get(test))
            bar.update(length)
            bar.set_postfix(_postfix(record), refresh=False)
            if i % cfg.checkpoint_every == 0 or i == len(lengths):
                flush()
                record.write_tables()
                ckpts.save(saved, step)
                record.write_summary(**{**summary, "step": step})
        else:
            summary["status"] = "finished"
        flush()
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        flush()
        ckpts.save(saved, step)
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        ckpts.close()
    summary["step"] = step
    summary["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    if t_steady is not None:
        summary["steps_per_sec"] = round(steady_steps / (time.perf_counter() - t_steady), 1)
    elif summary["wall_time_s"]:
        summary["steps_per_sec"] = round((step - start) / summary["wall_time_s"], 1)
    summary["final"] = dict(record.last)
    record.write_tables()
    record.write_summary(**summary)
    if cfg.figure and summary["status"] != "interrupted":
        _figures(workdir)
    return summary


def _eval_rows(record: RunRecord, trainer: loop.Trainer, state, step: int) -> None:
    eval_rows(record, step, *jax.device_get(trainer.evaluate(state)))


def _postfix(record: RunRecord) -> dict[str, str]:
    last = dict(record.last)
    keys = (("loss", "train_loss"), ("acc", "train_accuracy"), ("test_acc", "test_accuracy"))
    return {k: f"{last[n]:.4f}" for k, n in keys if n in last}


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """The entry point. Returns the metric Hydra's sweepers optimize (hparams_search/):
    the final test accuracy, 0.0 for a diverged run (ranked below every run that
    finished, chance included; never None or NaN, which a sweeper cannot rank)."""
    workdir = HydraConfig.get().runtime.output_dir
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend-probing chatter
    if cfg.compile_cache:  # re-runs of a config skip most of XLA's compile time
        jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if cfg.probe.overlap and cfg.parallel.data == 1:
        parallel.request_cpu_devices(2)  # a probe device beside the training one
    try:
        if cfg.sweep.lr or cfg.sweep.seeds:  # vectorized sweep: all members in one program
            from bnlab import sweep

            return sweep.main(cfg, workdir, list(HydraConfig.get().overrides.task), t0=_T0)
        summary = train_and_evaluate(cfg, workdir)
    except UserError as e:
        _say(f"error: {e}")
        sys.exit(2)
    final = summary.get("final", {})
    acc = final.get("test_accuracy")
    if summary["status"] == "diverged":
        _say(
            f"diverged at step {summary['diverged_at']} (loss non-finite or above "
            f"diverge_loss={cfg.diverge_loss:g}); record: {workdir}"
        )
        acc = 0.0
    elif summary["status"] == "interrupted":
        _say(f"interrupted at step {summary['step']}; resume with hydra.run.dir={workdir}")
        sys.exit(130)
    else:
        rate = summary.get("steps_per_sec")
        _say(
            f"{summary['status']} {summary['step']} steps"
            + (f" ({rate:.0f} steps/s)" if rate else "")
            + (f", test accuracy {acc:.4f}" if acc is not None else "")
            + f"; record: {workdir}"
        )
    return acc


config.register()

if __name__ == "__main__":
    main()
