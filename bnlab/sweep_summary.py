"""The end-of-sweep summary: one table and the sweep figures in the sweep directory.

:func:`write` loads a sweep (a Hydra multirun directory, or a vectorized sweep's run
directory) with :func:`bnlab.runs.load_sweep` and writes into it

- ``summary.csv`` and ``summary.parquet``: :attr:`bnlab.runs.Sweep.runs`, one row per
  run (overrides, label, status, diverged_at, final_test_accuracy, ...);
- ``figures/``: :func:`bnlab.plot.save_sweep_figures`, whose ``sweep_summary.png``
  shows final accuracy versus learning rate per norm variant (when a numeric key
  varies); with ``figure=false`` only that one.

:class:`SweepSummary` is the Hydra callback (``hydra.callbacks`` in
``configs/train.yaml``) that calls it when a multirun ends, whatever the launcher.
It never fails the sweep: a problem is logged as a one-line warning.

Analysis side: imports :mod:`bnlab.runs` and :mod:`bnlab.plot`, never the trainer.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("bnlab")

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
FIGURES = "figures"
SWEEP_PNG = "sweep_summary.png"


def write(sweep_dir: str | Path, *, figures: bool = True) -> list[Path]:
    """Write the summary table and figures into ``sweep_dir``; returns the paths.

    ``figures=True``: every sweep figure (:func:`bnlab.plot.save_sweep_figures`);
    ``False`` (``figure=false``): only ``figures/sweep_summary.png``. Raises what
    loading or plotting raises.
    """
    from bnlab import plot, runs

    sweep_dir = Path(sweep_dir)
    with warnings.catch_warnings():  # incomplete runs are listed in the table's `problems`
        warnings.simplefilter("ignore", runs.RunProblemWarning)
        sweep = runs.load_sweep(sweep_dir)
    table = sweep.runs
    paths = [sweep_dir / SUMMARY_CSV]
    table.to_csv(paths[0], index=False)
    try:
        table.to_parquet(sweep_dir / SUMMARY_PARQUET, index=False)
        paths.append(sweep_dir / SUMMARY_PARQUET)
    except Exception as e:  # e.g. an override column mixing types that Arrow refuses
        log.warning("summary.parquet not written (%s: %s)", type(e).__name__, e)
    out = sweep_dir / FIGURES
    if figures:
        return paths + plot.save_sweep_figures(sweep, out)
    x = swept_key(sweep)
    if x is not None and "final_test_accuracy" in table:
        out.mkdir(exist_ok=True)
        fig = plot.sweep_summary(table, sweep.scalars, x=x)
        fig.savefig(out / SWEEP_PNG, dpi=plot.DPI)
        paths.append(out / SWEEP_PNG)
    return paths


def swept_key(sweep: Any) -> str | None:
    """The x axis of the summary plot: the learning rate if it varies, else the first
    numeric key that does (as :func:`bnlab.plot.save_sweep_figures` picks it)."""
    import pandas as pd

    if "optimizer.lr" in sweep.varying:
        return "optimizer.lr"
    numeric = [k for k in sweep.varying if pd.api.types.is_numeric_dtype(sweep.runs[k])]
    return numeric[0] if numeric else None


def _summary_line(sweep_dir: Path) -> str:
    import pandas as pd

    table = pd.read_csv(sweep_dir / SUMMARY_CSV)
    counts = table["status"].value_counts().to_dict() if "status" in table else {}
    return ", ".join(f"{n} {s}" for s, n in counts.items())


class SweepSummary(Callback):
    """Hydra callback: :func:`write` into the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            figures = bool(config.get("figure", True))
            paths = write(sweep_dir, figures=figures)
            log.info("sweep summary (%s): %s", _summary_line(sweep_dir), ", ".join(map(str, paths)))
        except Exception as e:  # the summary must never cost the sweep its runs
            log.warning(
                "bnlab: no sweep summary (%s: %s); draw it with `python -m bnlab.plot %s`",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                config.hydra.sweep.dir,
            )
