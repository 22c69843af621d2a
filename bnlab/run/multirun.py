"""A Hydra multirun as one thing: every job's config checked before the first job
starts, and the sweep's summary written for the jobs that ran even when one fails.

Hydra's basic sweeper composes each job only as it launches it, so a mistake in the
fifth job stopped the sweep after four had trained, and a failed job skipped the
``on_multirun_end`` callbacks (the sweep summary). :class:`CheckJobs` (a callback in
``configs/train.yaml``) expands the sweep as the basic sweeper will and runs bnlab's
checks on every job at ``on_multirun_start`` (a failure is one ``bnlab: error:``
line naming the job, exit 2, before the sweep directory exists); :func:`summary_after_failure` is what
the entry point calls when a job stops the multirun.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnlab.errors import UserError, say

NOT_CHECKED_HERE = 1 << 20  # the device count: known only in the job (JAX starts there)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The overrides of every job the basic sweeper will launch, in its order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_job(cfg: DictConfig) -> None:
    """bnlab's checks of one composed job config that need no data and no device."""
    from bnlab import config, data, loggers
    from bnlab.models import check_model
    from bnlab.run.build import data_settings

    c = config.typed(cfg)
    if c.parallel.data == 0:  # all local devices: how many, only the job knows
        c.parallel.data = 1
    config.check(c, NOT_CHECKED_HERE)
    check_model(c.model, c.import_path)
    data.check_settings(**data_settings(c))
    loggers.check(c)


class CheckJobs(Callback):
    """Hydra callback: refuse a multirun whose jobs are not all valid, before any runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return  # other sweepers (Optuna) choose their jobs as they go
        from hydra import compose

        jobs = job_overrides(config)
        for i, job in enumerate(jobs):
            try:
                check_job(compose(str(config.hydra.job.config_name), overrides=job))
            except UserError as e:  # Hydra turns a callback's exception into a warning
                say(f"error: job {i} of {len(jobs)} ({' '.join(job)}): {e}; no job was started")
                sys.exit(2)


def summary_after_failure(sweep_dir: str | Path, figures: bool) -> None:
    """The sweep summary of the jobs that ran before one failed (none: nothing)."""
    from bnlab.analysis import report

    d = Path(sweep_dir)
    if not any(p.is_file() for p in d.glob("*/summary.json")) and not any(
        d.glob("*/*/summary.json")
    ):
        return
    try:
        paths = report.write_summary(d, figures=figures)
        say(f"sweep summary of the jobs that ran: {paths[0]}")
    except Exception as e:  # the summary must never hide the job's own error
        say(f"no sweep summary ({type(e).__name__}: {e})")
