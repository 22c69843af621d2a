"""Everything that writes analysis files: figures as PNG, the sweep summary, the CLI.

- :func:`save_run_figures` (called by the trainer at the end of every run) and
  :func:`save_sweep_figures` draw the figures of :mod:`bnlab.analysis.plot` into ``figures/``;
- :func:`write_summary` is the end-of-sweep summary: it loads a sweep (a Hydra
  multirun directory, or a vectorized sweep's run directory) and writes into it
  ``summary.csv`` and ``summary.parquet`` (:attr:`bnlab.analysis.runs.Sweep.runs`, one row per
  run: overrides, seed, label, status, diverged_at, final_test_accuracy, ...) and
  ``figures/`` (every sweep figure; with ``figure=false`` only ``sweep_summary.png``,
  final accuracy versus learning rate per norm variant, error bars over seeds);
- :class:`SweepSummary` is the Hydra callback (``hydra.callbacks`` in
  ``configs/train.yaml``) that calls :func:`write_summary` when a multirun ends,
  whatever the launcher. It never fails the sweep: a problem is one warning line;
- ``python -m bnlab.report PATH`` writes the figures of a run or a sweep, by what
  PATH holds, and prints their paths.

Analysis side: imports :mod:`bnlab.analysis.runs` and :mod:`bnlab.analysis.plot`, never the trainer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure

from bnlab.analysis import plot
from bnlab.analysis.runs import (
    RunProblemWarning,
    Sweep,
    find_runs,
    is_run_dir,
    layer_order,
    load_run,
    load_sweep,
    network_order,
)
from bnlab.record.tables import FIGURES

__all__ = [
    "save_run_figures",
    "save_sweep_figures",
    "swept_key",
    "write_summary",
    "SweepSummary",
    "main",
    "SUMMARY_CSV",
    "SUMMARY_PARQUET",
    "SWEEP_PNG",
]

log = logging.getLogger("bnlab")

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
SWEEP_PNG = "sweep_summary.png"


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=plot.DPI)
    return path


# --------------------------------------------------------------------------- one run


def _run_title(run) -> str:
    parts = [run.label]
    data = run.value("data")
    if data:
        parts.append(str(data))
    lr = run.value("optimizer.lr")
    if lr is not None:
        parts.append(f"lr {lr:g}" if isinstance(lr, int | float) else f"lr {lr}")
    status = run.status
    if status == "diverged":
        status = f"diverged at step {run.summary.get('diverged_at')}"
    elif run.summary.get("step") is not None:
        status = f"{status} at step {run.summary['step']:,}"
    return ", ".join(parts) + f" ({status})"


MOMENT_LAYERS = 8  # the mean/std figure's columns at most (evenly spaced through the net)


def drift_site(acts: pd.DataFrame, site: str | None = None) -> tuple[str | None, str]:
    """The (layer, site) a drift figure shows, the last in network order (the order the
    run recorded its sites in). ``site`` defaults to ``pre`` (the built-in models'
    nonlinearity input) where the record has it, else ``in``: a norm layer's input
    (what drifts; its output is gamma/beta by construction), else a hidden layer's.
    With ``in`` or ``out`` the norm layers (those with both) come first."""
    pooled = acts[acts["unit"] == -1] if len(acts) else acts
    if not len(pooled):
        return None, site or "pre"
    found: dict[str, set[str]] = {}
    for layer, s in zip(pooled["layer"], pooled["site"], strict=True):
        found.setdefault(layer, set()).add(s)
    recorded = acts.attrs.get("layer_order") or list(found)  # else first appearance
    sites = {la: found[la] for la in layer_order(found, recorded)}
    norms = [la for la, s in sites.items() if {"in", "out"} <= s]
    if site is None:
        has = set().union(*sites.values())
        site = "pre" if "pre" in has else "in" if "in" in has else "out"
    have = [la for la, s in sites.items() if site in s]
    if site in ("in", "out") and any(la in norms for la in have):
        have = [la for la in have if la in norms]
    return (have[-1] if have else None), site


def moment_layers(at_site: pd.DataFrame) -> pd.DataFrame:
    """``at_site`` restricted to at most :data:`MOMENT_LAYERS` layers, evenly spaced in
    :func:`~bnlab.analysis.runs.layer_order`, the first and last included (a ResNet-20 has 19
    norm layers)."""
    names = layer_order(at_site["layer"].unique(), at_site.attrs.get("layer_order"))
    if len(names) <= MOMENT_LAYERS:
        return at_site
    step = (len(names) - 1) / (MOMENT_LAYERS - 1)
    keep = {names[round(i * step)] for i in range(MOMENT_LAYERS)}
    return at_site[at_site["layer"].isin(keep)]


def save_run_figures(run_dir: str | Path, *, warn: bool = False) -> list[Path]:
    """Write one run's figures as PNG into ``run_dir/figures/``; return their paths.

    The drift bands of the last hidden layer's ``pre`` site (:func:`drift_site`), the
    learning curves, the per-layer mean/std of that site and, where BN learns them,
    gamma/beta. A
    figure whose rows are missing (a run that diverged at once, a table not
    written) is skipped, never an error; ``warn=True`` (the CLI) announces such a
    record with a :class:`bnlab.analysis.runs.RunProblemWarning` (the trainer, which calls
    this at the end of every run, reports its own record).
    """
    run = load_run(run_dir, warn=warn)
    out = run.path / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    label = run.label
    title = _run_title(run)
    acts = run.activations.assign(label=label)
    order = network_order([run.summary or {}])
    acts.attrs["layer_order"] = run.layers.attrs["layer_order"] = order
    paths: list[Path] = []
    layer, site = drift_site(acts)
    pre = acts[(acts["site"] == site) & (acts["unit"] == -1)] if len(acts) else acts
    if layer and len(pre[pre["layer"] == layer]):
        what = f"{layer}/{site} percentiles on the probe batch (pooled over units)"
        fig = plot.drift_bands(pre, layer, site, title=f"{what}\n{title}")
        paths.append(_save(fig, out / f"drift_{layer.replace('/', '_')}_{site}.png"))
    if len(run.scalars) and run.scalars["name"].isin(["test_accuracy", "train_loss"]).any():
        fig = plot.learning_curves(run.scalars.assign(label=label), title=title)
        paths.append(_save(fig, out / "learning_curves.png"))
    if len(pre) and pre["stat"].isin(["mean", "std"]).any():
        what = f"mean and std of each layer's {site} site on the probe batch"
        fig = plot.layer_moments(moment_layers(pre), site, title=f"{what}\n{title}")
        paths.append(_save(fig, out / f"layer_moments_{site}.png"))
    lay = run.layers
    if len(lay) and lay["stat"].isin(["gamma_mean", "beta_mean"]).any():
        what = "learned BN scale (gamma) and shift (beta)"
        fig = plot.gamma_beta(lay.assign(label=label), title=f"{what}\n{title}")
        paths.append(_save(fig, out / "gamma_beta.png"))
    return paths


# --------------------------------------------------------------------------- sweeps


def _auto_target(runs: pd.DataFrame) -> float | None:
    """90% of the best final test accuracy of the runs that did not diverge."""
    if "final_test_accuracy" not in runs:
        return None
    ok = runs.loc[runs["status"] != "diverged", "final_test_accuracy"].dropna()
    return round(0.9 * float(ok.max()), 2) if len(ok) else None


def swept_key(sweep: Sweep) -> str | None:
    """The x axis of the sweep summary: the learning rate if it varies, else the first
    numeric key that does, never the seed (seeds are replicates, averaged over)."""
    if "optimizer.lr" in sweep.varying:
        return "optimizer.lr"
    for k in sweep.settings:
        if pd.api.types.is_numeric_dtype(sweep.runs[k]):
            return k
    return None


def save_sweep_figures(
    sweep: Sweep | str | Path,
    out: str | Path | None = None,
    *,
    layer: str | None = None,
    site: str | None = None,
    target: float | str | None = "auto",
    x: str | None = None,
    hue: str | None = None,
) -> list[Path]:
    """Write a sweep's figures as PNG into ``out`` (default ``<sweep dir>/figures``).
    ``x``/``hue``: the sweep summary's axis and line keys (default: :func:`swept_key`
    and ``norm``); runs without ``x`` are named in a warning and the title.

    Drift bands (runs side by side; ``layer``/``site`` default: :func:`drift_site`),
    per-layer mean/std, learning curves,
    gamma/beta where present, and the sweep summary when a numeric key (the
    learning rate first; not the seed) varies. Runs that differ only by their seed
    are drawn as their mean with a 95% interval. ``target='auto'``: 90% of the best
    final accuracy.
    """
    if not isinstance(sweep, Sweep):
        root = Path(sweep)
        sweep = load_sweep(sweep)
    else:
        root = Path(sweep.members[0].path).parent
    out = Path(out) if out is not None else root / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    acts = sweep.activations
    auto, site = drift_site(acts, site)
    layer = layer or auto
    at_site = acts[(acts["site"] == site) & (acts["unit"] == -1)] if len(acts) else acts
    if layer and len(at_site[at_site["layer"] == layer]):
        fig = plot.drift_bands(at_site, layer, site)
        paths.append(_save(fig, out / f"drift_{layer.replace('/', '_')}_{site}.png"))
    if len(at_site) and at_site["stat"].isin(["mean", "std"]).any():
        fig = plot.layer_moments(moment_layers(at_site), site)
        paths.append(_save(fig, out / f"layer_moments_{site}.png"))
    sc = sweep.scalars
    if len(sc) and sc["name"].isin(["test_accuracy", "train_loss"]).any():
        paths.append(_save(plot.learning_curves(sc), out / "learning_curves.png"))
    lay = sweep.layers
    if len(lay) and lay["stat"].isin(["gamma_mean", "beta_mean"]).any():
        paths.append(_save(plot.gamma_beta(lay), out / "gamma_beta.png"))
    x = x or swept_key(sweep)
    if x is not None and "final_test_accuracy" in sweep.runs:
        if target == "auto":
            target = _auto_target(sweep.runs)
        fig = plot.sweep_summary(sweep.runs, sc, x=x, hue=hue or "norm",
                                 target=target if len(sc) else None)  # fmt: skip
        paths.append(_save(fig, out / SWEEP_PNG))
    return paths


def write_summary(sweep_dir: str | Path, *, figures: bool = True) -> list[Path]:
    """Write the summary table and figures into ``sweep_dir``; returns the paths.

    ``figures=True``: every sweep figure (:func:`save_sweep_figures`); ``False``
    (``figure=false``): only ``figures/sweep_summary.png``. Raises what loading or
    plotting raises.
    """
    sweep_dir = Path(sweep_dir)
    with warnings.catch_warnings():  # incomplete runs are listed in the table's `problems`
        warnings.simplefilter("ignore", RunProblemWarning)
        sweep = load_sweep(sweep_dir)
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
        return paths + save_sweep_figures(sweep, out)
    x = swept_key(sweep)
    if x is not None and "final_test_accuracy" in table:
        out.mkdir(exist_ok=True)
        paths.append(_save(plot.sweep_summary(table, sweep.scalars, x=x), out / SWEEP_PNG))
    return paths


def _summary_line(sweep_dir: Path) -> str:
    table = pd.read_csv(sweep_dir / SUMMARY_CSV)
    counts = table["status"].value_counts().to_dict() if "status" in table else {}
    return ", ".join(f"{n} {s}" for s, n in counts.items())


class SweepSummary(Callback):
    """Hydra callback: :func:`write_summary` into the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            figures = bool(config.get("figure", True))
            paths = write_summary(sweep_dir, figures=figures)
            log.info("sweep summary (%s): %s", _summary_line(sweep_dir), ", ".join(map(str, paths)))
        except Exception as e:  # the summary must never cost the sweep its runs
            log.warning(
                "bnlab: no sweep summary (%s: %s); draw it with `python -m bnlab.report %s`",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                config.hydra.sweep.dir,
            )


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bnlab-plot" if Path(sys.argv[0]).name == "bnlab-plot" else "python -m bnlab.report",
        description="Write the figures of a run or a sweep as PNG and print their paths.",
    )
    ap.add_argument("path", nargs="+", help="a run dir, a multirun dir, or globs of run dirs")
    ap.add_argument("--out", help="folder for the PNGs (default: <path>/figures)")
    ap.add_argument("--layer", help="layer of the drift figure (default: last hidden layer)")
    ap.add_argument(
        "--site",
        help="site of the drift and mean/std figures (default: pre, else a norm layer's in)",
    )
    ap.add_argument("--x", help="the sweep summary's x axis, a key (default: the lr if it varies)")
    ap.add_argument("--hue", help="the sweep summary's lines, a key (default: norm)")
    ap.add_argument(
        "--target", default="auto",
        help="test accuracy for the steps-to-target panel (default: 90%% of the best; 'none')",
    )  # fmt: skip
    args = ap.parse_args(argv)
    target = None if args.target == "none" else args.target
    if target not in (None, "auto"):
        target = float(target)
    try:
        runs = find_runs(args.path)
    except FileNotFoundError as e:
        print(f"bnlab.analysis.report: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"bnlab.analysis.report: no run directories under {' '.join(args.path)}",
            file=sys.stderr,
        )
        return 2
    single = len(args.path) == 1 and is_run_dir(args.path[0])
    if single and args.out is None and not (args.layer or args.site or args.x or args.hue):
        paths = save_run_figures(args.path[0], warn=True)
    else:
        sweep = load_sweep(runs)
        if args.out is None:
            if len(args.path) == 1 and Path(args.path[0]).is_dir():
                root = Path(args.path[0])
            else:
                parents = [str(Path(r).resolve().parent) for r in runs]
                root = Path(os.path.commonpath(parents))
            out = root / FIGURES
        else:
            out = Path(args.out)
        for key in (args.x, args.hue):
            if key is not None and key not in sweep.runs.columns:
                keys = ", ".join(k for k in sweep.keys if k != "seed")
                print(f"bnlab.analysis.report: no key {key!r} in these runs; keys: {keys}",
                      file=sys.stderr)  # fmt: skip
                return 2
        paths = save_sweep_figures(sweep, out, layer=args.layer, site=args.site, target=target,
                                   x=args.x, hue=args.hue)  # fmt: skip
    if not paths:
        print("bnlab.analysis.report: nothing to plot (empty tables)", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
