"""The atlas's report: per-seed tables from the runs, then everything else from them.

:func:`per_seed` reads a sweep (one row per model x normalizer x lr x seed); every
number after it (:func:`summary`, :func:`effects`, :func:`verdicts`, the figure, the
Markdown and HTML pages) is a function of that one table, so a test can recompute the
verdicts from the committed ``per_seed.csv``. Definitions (also written into the report):

- ``val_accuracy``: the run's final validation accuracy (NaN if it diverged);
- ``steps_to_target``: the first evaluation step whose validation accuracy reaches the
  target; a run that never reaches it (or diverges) counts as ``steps + eval_every``
  (censored, so it still counts in the paired differences);
- ``drift``: scale-free input drift, per site the shift of the median from step 0 to
  the last probe over the p15-p85 width at the last probe, the median over the sites
  (the nonlinearity's input: ``pre`` in the MLP/CNN presets, ``*norm*/out`` elsewhere);
- ``grad_ics``: gradient-ICS (Santurkar et al. 2018), the median over layers and probes
  of ``grad_diff_rel``, ||G - G'|| / ||G||, G' the layer's gradient after the earlier
  layers' update;
- ``loss_range``, ``grad_predictiveness``, ``beta_smoothness``: Santurkar et al.'s
  three loss-landscape measures along the gradient (Fig. 4: the loss's variation, the
  gradient's l2 change, the effective beta-smoothness; bnlab's ``probe.ics_every``
  probes at ``probe.landscape_steps`` multiples of the lr-scaled step), the median over
  probes;
- ``sharpness``: the top eigenvalue of the training loss's Hessian at the last step
  (``probe.sharpness_every``); ``sharpness_x_lr`` = sharpness x lr / 2, i.e. sharpness
  over 2/lr (1 = the edge of stability of gradient descent, Cohen et al. 2021);
- ``effective_lr``: lr / ||W||^2 of the scale-invariant layers (a weight followed by a
  normalizer: Arora et al. 2019), the median over those layers at the last probe (NaN
  for ``none``, which has none); ``dead_fraction``: the mean over the activation sites
  of the fraction of units that are 0 on the whole probe batch at the last probe;
  reported, not judged;
- ``lr_width``: per seed, log10 of the widest lr range (lo, hi of the grid) whose
  accuracy is within ``TOLERANCE`` of the normalizer's best mean accuracy (decades).

Each claim is an effect of a normalizer against ``none`` on the same architecture:
the paired (same seed) difference, with the 95% interval of
:func:`bnlab.analysis.stats.aggregate` (t for n >= 5, min-max below). Claims about
training (``at best``) compare each side at its own best lr (on validation); claims
about the landscape (``at none's lr``), whose measures scale with the lr, compare both
at none's best lr, as Santurkar et al. compared networks at one lr.
Verdict: ``holds`` when that interval lies on the claimed side of 0; ``depends on lr``
when, over the lrs both share, the per-lr intervals exclude 0 on both sides; else
``differs`` (``n/a`` where no seed of both has a value, e.g. every run diverged).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bnlab.analysis.stats import aggregate, format_interval

TOLERANCE = 0.02  # accuracy within this of the best mean counts as reaching it
KEYS = ["model", "norm", "lr", "seed"]
# claim -> (per-seed column, claimed sign of normalizer - none, words, source, where:
# "best" = each side at its own best lr, "same" = both at none's best lr)
CLAIMS = {
    "faster": ("steps_to_target", -1, "reaches the target accuracy in fewer steps",
               "Ioffe & Szegedy 2015, Fig. 1(a)"),
    "higher accuracy": ("val_accuracy", 1, "reaches a higher validation accuracy",
                        "Ioffe & Szegedy 2015"),
    "lr tolerance": ("lr_width", 1, "reaches its best accuracy over a wider lr range",
                     "Ioffe & Szegedy 2015; Bjorck et al. 2018"),
    "less input drift": ("drift", -1, "lets its layers' inputs drift less (scale-free)",
                         "Ioffe & Szegedy 2015, Fig. 1(b,c)"),
    "less gradient-ICS": ("grad_ics", -1, "has lower gradient-ICS", "tested by Santurkar et al. 2018"),
    "smoother loss": ("loss_range", -1, "has a smaller loss variation along the gradient (Lipschitzness)",
                      "Santurkar et al. 2018, Fig. 4a", "same"),
    "more predictive gradient": ("grad_predictiveness", -1, "has a gradient that changes less along the gradient",
                                 "Santurkar et al. 2018, Fig. 4b", "same"),
    "smaller beta-smoothness": ("beta_smoothness", -1, "has a smaller effective beta-smoothness",
                                "Santurkar et al. 2018, Fig. 4c", "same"),
    "lower sharpness": ("sharpness", -1, "has a smaller top Hessian eigenvalue at the end",
                        "Lyu et al. 2022; Cohen et al. 2021", "same"),
}  # fmt: skip
CLAIMS = {c: (*v, "best") if len(v) == 4 else v for c, v in CLAIMS.items()}
SMOOTHNESS = ("loss_range", "grad_predictiveness", "beta_smoothness")
DIAGNOSTICS = ("sharpness", "sharpness_x_lr", "effective_lr", "dead_fraction")
PER_LR = ("steps_to_target", "val_accuracy", "drift", "grad_ics", *SMOOTHNESS, "sharpness")


# --------------------------------------------------------------------------- per seed


def _site_drift(acts: pd.DataFrame) -> pd.Series:
    """Per (run, layer, site): |median shift| from step 0 to the last probe over the
    p15-p85 width at the last probe, at the nonlinearities' inputs."""
    a = acts[acts["unit"] == -1]
    site = a["site"].astype(str)
    path = a["layer"].astype(str) + "/" + site
    a = a[(site == "pre") | path.str.contains(r"norm[^/]*/out$", regex=True)]
    if not len(a):
        return pd.Series(dtype=float)
    w = a.pivot_table(index=["run", "layer", "site", "step"], columns="stat", values="value")
    w = w.reset_index().sort_values("step")
    g = w.groupby(["run", "layer", "site"])
    first, last = g.first(), g.last()
    per_site = (last["p50"] - first["p50"]).abs() / (last["p85"] - last["p15"])
    return per_site.replace([np.inf, -np.inf], np.nan)


def _keys(runs: pd.DataFrame, run: pd.Series) -> pd.DataFrame:
    """model, norm, lr, seed of each run id in ``run`` (``runs``: the sweep's runs by id)."""
    return pd.DataFrame({
        "model": run.map(runs["atlas_model"]), "norm": run.map(runs["norm"]),
        "lr": pd.to_numeric(run.map(runs["optimizer.lr"])),
        "seed": run.map(runs["seed"]).astype(int),
    })  # fmt: skip


def _at_last_step(rows: pd.DataFrame, how: str) -> pd.Series:
    """Per run: ``how`` (median, mean) of ``value`` over the rows at the run's last step."""
    last = rows.groupby("run")["step"].transform("max")
    return rows[rows["step"] == last].groupby("run")["value"].agg(how)


def _steps_to_target(scalars: pd.DataFrame, runs: pd.DataFrame, target: float) -> pd.Series:
    v = scalars[scalars["name"] == "val_accuracy"].sort_values("step")
    hit = v[v["value"] >= target].groupby("run")["step"].min()
    steps = runs.set_index("run")["steps"].astype(float)
    every = runs.set_index("run")["eval_every"].astype(float)
    out = hit.reindex(steps.index).astype(float)
    diverged = runs.set_index("run")["status"].eq("diverged")
    out[diverged] = np.nan
    return out.fillna(steps + every)


def tables(sweep, target: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's two tables of a sweep: :func:`per_seed` and :func:`per_layer`, with
    the per-site drift (one pivot of every activation row) computed once for both."""
    sites = _site_drift(sweep.activations)
    return per_seed(sweep, target, sites), per_layer(sweep, sites)


def per_layer(sweep, sites: pd.Series | None = None) -> pd.DataFrame:
    """One row per run x site: model, norm, lr, seed, site (``layer/site``) and its
    scale-free input drift (the per-layer view of ``per_seed``'s ``drift``)."""
    r = sweep.runs.set_index("run")
    sites = _site_drift(sweep.activations) if sites is None else sites
    d = sites.rename("drift").reset_index()
    d = d[d["run"].isin(r.index[~r["status"].eq("diverged")])]
    out = _keys(r, d["run"]).assign(site=d["layer"] + "/" + d["site"], drift=d["drift"])
    return out.sort_values([*KEYS, "site"]).reset_index(drop=True)


def per_seed(sweep, target: float, sites: pd.Series | None = None) -> pd.DataFrame:
    """One row per run: model, norm, lr, seed, status and the per-run measures."""
    r = sweep.runs.copy()
    out = pd.concat([r[["run"]], _keys(r.set_index("run"), r["run"]),
                     r[["status"]]], axis=1)  # fmt: skip
    div = r["status"].eq("diverged")
    out["val_accuracy"] = pd.to_numeric(r["final_val_accuracy"]).where(~div)
    out["test_accuracy"] = pd.to_numeric(r["final_test_accuracy"]).where(~div)
    out["steps_to_target"] = out["run"].map(_steps_to_target(sweep.scalars, r, target))
    sites = _site_drift(sweep.activations) if sites is None else sites
    out["drift"] = out["run"].map(sites.groupby("run").median())
    ics = sweep.ics
    ics = ics[(ics["stat"] == "grad_diff_rel") & (ics["layer"] != "all") & (ics["step"] > 0)]
    out["grad_ics"] = out["run"].map(ics.groupby("run")["value"].median())
    land = sweep.ics[(sweep.ics["layer"] == "all") & (sweep.ics["step"] > 0)]
    for stat in SMOOTHNESS:  # Santurkar et al.'s landscape measures
        rows = land[land["stat"] == stat]
        out[stat] = out["run"].map(rows.groupby("run")["value"].median())
    sc = sweep.scalars
    sharp = sc[sc["name"] == "sharpness"].sort_values("step").groupby("run")["value"].last()
    out["sharpness"] = out["run"].map(sharp).where(~div)
    out["sharpness_x_lr"] = out["sharpness"] * out["lr"] / 2
    lay = sweep.layers
    eff = _at_last_step(lay[lay["stat"] == "effective_lr"], "median")
    out["effective_lr"] = out["run"].map(eff).where(~div)
    acts = sweep.activations
    dead = _at_last_step(acts[(acts["stat"] == "dead_fraction") & (acts["unit"] == -1)], "mean")
    out["dead_fraction"] = out["run"].map(dead).where(~div)
    out = out.drop(columns="run").sort_values(KEYS).reset_index(drop=True)
    out.attrs["target"] = target
    return out


# --------------------------------------------------------------------------- from the table


def best_lr(ps: pd.DataFrame) -> pd.Series:
    """Per (model, norm): the lr of the highest mean validation accuracy (diverged = 0)."""
    m = ps.assign(v=ps["val_accuracy"].fillna(0)).groupby(["model", "norm", "lr"])["v"].mean()
    return m.groupby(["model", "norm"]).idxmax().map(lambda k: k[2])


def with_lr_width(ps: pd.DataFrame) -> pd.DataFrame:
    """``lr_width`` per (model, norm, seed): decades of lr within TOLERANCE of the best mean."""
    best = ps.groupby(["model", "norm", "lr"])["val_accuracy"].mean().groupby(
        ["model", "norm"]).max()  # fmt: skip
    rows = []
    for (model, norm, seed), g in ps.groupby(["model", "norm", "seed"]):
        ok = g[g["val_accuracy"] >= best[(model, norm)] - TOLERANCE]["lr"]
        width = math.log10(ok.max() / ok.min()) if len(ok) else np.nan
        rows.append(dict(model=model, norm=norm, seed=seed, lr_width=width))
    return pd.DataFrame(rows)


def at_best(ps: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows at each (model, norm)'s best lr, with ``lr_width`` joined."""
    b = best_lr(ps)
    rows = ps[ps["lr"] == [b[(m, n)] for m, n in zip(ps["model"], ps["norm"], strict=True)]]
    return rows.merge(with_lr_width(ps), on=["model", "norm", "seed"], how="left")


def summary(ps: pd.DataFrame) -> pd.DataFrame:
    """Per (model, norm): best lr, lr range, and every measure at the best lr with its interval."""
    best = at_best(ps)
    out = []
    means = ps.groupby(["model", "norm", "lr"])["val_accuracy"].mean()
    for (model, norm), g in best.groupby(["model", "norm"], sort=False):
        m = means[(model, norm)]
        ok = m[m >= m.max() - TOLERANCE].index
        row = dict(model=model, norm=norm, best_lr=g["lr"].iloc[0],
                   lr_range=f"{ok.min():g}-{ok.max():g}" if len(ok) else "n/a")  # fmt: skip
        for col in (
            "val_accuracy",
            "steps_to_target",
            "lr_width",
            "drift",
            "grad_ics",
            *SMOOTHNESS,
            *DIAGNOSTICS,
        ):
            row[col] = format_interval(aggregate(g, col).iloc[0])
        out.append(row)
    return pd.DataFrame(out)


def _paired(a: pd.DataFrame, b: pd.DataFrame, col: str) -> pd.Series:
    """Per seed: a's value minus b's (seeds in both, finite in both)."""
    d = a.set_index("seed")[col] - b.set_index("seed")[col]
    return d.dropna()


def _interval(d: pd.Series) -> pd.Series:
    if not len(d):
        return pd.Series(dict(mean=np.nan, lo=np.nan, hi=np.nan, n=0, method="none"))
    return aggregate(pd.DataFrame({"d": d.to_numpy(dtype=float)}), "d").iloc[0]


def _sign(iv: pd.Series) -> int:
    return 1 if iv["lo"] > 0 else -1 if iv["hi"] < 0 else 0


def effects(ps: pd.DataFrame) -> pd.DataFrame:
    """Per model, normalizer (not none) and claim: the effect against none with its
    interval, the per-lr signs, and the verdict (module docstring)."""
    best, lrs = at_best(ps), best_lr(ps)
    out = []
    for model in dict.fromkeys(ps["model"]):
        base = best[(best["model"] == model) & (best["norm"] == "none")]
        if not len(base):
            continue
        at_none = ps[(ps["model"] == model) & (ps["lr"] == lrs[(model, "none")])]
        for norm in [n for n in dict.fromkeys(ps["norm"]) if n != "none"]:
            mine = best[(best["model"] == model) & (best["norm"] == norm)]
            for claim, (col, sign, _, _, where) in CLAIMS.items():
                if where == "same":
                    a, b = at_none[at_none["norm"] == norm], at_none[at_none["norm"] == "none"]
                else:
                    a, b = mine, base
                iv = _interval(_paired(a, b, col))
                lr_signs = set()
                if col in PER_LR:
                    for lr in sorted(set(ps["lr"])):
                        sel = (ps["model"] == model) & (ps["lr"] == lr)
                        d = _paired(
                            ps[sel & (ps["norm"] == norm)], ps[sel & (ps["norm"] == "none")], col
                        )
                        if len(d):
                            lr_signs.add(_sign(_interval(d)))
                primary = _sign(iv)
                if iv["n"] == 0:
                    verdict = "n/a"
                elif {sign, -sign} <= lr_signs:
                    verdict = "depends on lr"
                elif primary == sign:
                    verdict = "holds"
                else:
                    verdict = "differs"
                out.append(dict(model=model, norm=norm, claim=claim, column=col, at=where,
                                effect=iv["mean"], lo=iv["lo"], hi=iv["hi"], n=int(iv["n"]),
                                method=iv["method"],
                                lr_signs=",".join(str(s) for s in sorted(lr_signs)),
                                verdict=verdict))  # fmt: skip
    return pd.DataFrame(out)


def verdicts(ps: pd.DataFrame) -> pd.DataFrame:
    """:func:`effects`, the table the report's verdicts come from."""
    return effects(ps)


# --------------------------------------------------------------------------- figure and pages

_AT = {"best": "each at its best lr", "same": "both at none's best lr"}
COLORS = {"holds": "#2a9d55", "differs": "#c0392b", "depends on lr": "#e08e0b", "n/a": "0.7"}


def figure(eff: pd.DataFrame):
    """The overview: a grid of architectures x normalizers; in each cell every claim's
    effect against none with its interval, scaled per claim (80th percentile of |bound|
    over the grid, clipped beyond), coloured by verdict."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models, norms = list(dict.fromkeys(eff["model"])), list(dict.fromkeys(eff["norm"]))
    claims = list(CLAIMS)
    # per claim, the 80th percentile of |bound| over the grid: one runaway cell (a
    # normalizer that blew up) would otherwise flatten every other cell; beyond it, clipped
    scale = {c: max(np.nanquantile(eff.loc[eff["claim"] == c, ["lo", "hi"]].abs().to_numpy(),
                                   0.8), 1e-12) if (eff["claim"] == c).any() else 1.0
             for c in claims}  # fmt: skip
    fig = Figure(figsize=(2.0 * len(norms) + 1.6, 1.5 * len(models) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(norms), sharex=True, sharey=True, squeeze=False)
    for i, model in enumerate(models):
        for j, norm in enumerate(norms):
            ax = axes[i, j]
            ax.axvline(0, color="0.6", lw=0.8)
            for k, c in enumerate(claims):
                r = eff[(eff["model"] == model) & (eff["norm"] == norm) & (eff["claim"] == c)]
                if not len(r) or not np.isfinite(r["effect"].iloc[0]):
                    continue
                r, s = r.iloc[0], scale[c]
                col = COLORS[r["verdict"]]
                lo, hi, mid = (
                    float(np.clip(r[v] / s, -1.05, 1.05)) for v in ("lo", "hi", "effect")
                )
                ax.plot([lo, hi], [k, k], color=col, lw=2)
                ax.plot(
                    mid, k, ">" if mid >= 1.05 else "<" if mid <= -1.05 else "o", color=col, ms=4
                )
            ax.set_xlim(-1.1, 1.1)
            ax.tick_params(labelsize=6, labelleft=j == 0)
            if i == 0:
                ax.set_title(norm, fontsize=8)
            if j == len(norms) - 1:
                ax.yaxis.set_label_position("right")
                ax.set_ylabel(model, fontsize=8)
    axes[0, 0].set_yticks(range(len(claims)), claims, fontsize=7)
    axes[0, 0].set_ylim(len(claims) - 0.5, -0.5)
    fig.suptitle("effect against none (scaled per claim to the 80th percentile of its "
                 "|bounds|, clipped beyond: triangles; green holds, red differs, orange "
                 "depends on lr)", fontsize=8)  # fmt: skip
    return fig


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _verdict_table(eff: pd.DataFrame) -> pd.DataFrame:
    e = eff.assign(text=[f"{r['verdict']}: {r['effect']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}] "
                         f"(n={r['n']}, {r['method']})" for _, r in eff.iterrows()])  # fmt: skip
    t = e.pivot_table(index=["model", "norm"], columns="claim", values="text", aggfunc="first",
                      sort=False)  # fmt: skip
    return t[[c for c in CLAIMS if c in t.columns]].reset_index()


def where_it_holds(eff: pd.DataFrame) -> pd.DataFrame:
    """Claims (rows) x architectures (columns): how many normalizers the claim holds for,
    and which (the verdicts of :func:`effects`, read across the grid)."""
    models = list(dict.fromkeys(eff["model"]))
    rows = []
    for claim in [c for c in CLAIMS if c in set(eff["claim"])]:
        row = {"claim": claim}
        for model in models:
            e = eff[(eff["claim"] == claim) & (eff["model"] == model)]
            ok = list(e.loc[e["verdict"] == "holds", "norm"])
            row[model] = f"{len(ok)}/{len(e)}" + (f": {', '.join(ok)}" if ok else "")
        rows.append(row)
    return pd.DataFrame(rows)


def layer_tables(pl: pd.DataFrame, ps: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per model: each site's input drift (rows, in the network's order) under each
    normalizer (columns) at that normalizer's best lr, mean with its 95% interval."""
    b = best_lr(ps)
    pl = pl[
        pl["lr"] == [b.get((m, n), np.nan) for m, n in zip(pl["model"], pl["norm"], strict=True)]
    ]
    out = {}
    for model, g in pl.groupby("model", sort=False):
        agg = aggregate(g, "drift", ["site", "norm"])
        agg["text"] = [_short(r) for _, r in agg.iterrows()]
        t = agg.pivot(index="site", columns="norm", values="text")
        norms = [n for n in dict.fromkeys(ps["norm"]) if n in t.columns]
        out[model] = t.loc[list(dict.fromkeys(g["site"])), norms].reset_index()
    return out


def _short(r: pd.Series) -> str:
    """``mean ± half-width`` without the (n, method) tail (the section says it once)."""
    return format_interval(r).split(" (")[0]


def write(ps: pd.DataFrame, out: Path, *, title: str, setup: str,
          layers: pd.DataFrame | None = None) -> dict[str, Path]:  # fmt: skip
    """per_seed.csv, per_layer.csv (with ``layers``), summary.csv, verdicts.csv,
    figures/atlas.png, report.md, report.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    paths = {n: out / n for n in ("per_seed.csv", "summary.csv", "verdicts.csv", "report.md",
                                  "report.html")}  # fmt: skip
    paths["figure"] = out / "figures" / "atlas.png"
    target = ps.attrs.get("target", "n/a")
    ps.to_csv(paths["per_seed.csv"], index=False, float_format="%.6g")
    ps = pd.read_csv(paths["per_seed.csv"])  # everything below from the table as written
    by_layer = {}
    if layers is not None:
        paths["per_layer.csv"] = out / "per_layer.csv"
        layers.to_csv(paths["per_layer.csv"], index=False, float_format="%.6g")
        by_layer = layer_tables(pd.read_csv(paths["per_layer.csv"]), ps)
    drift_md = "".join(f"\n### {m}\n\n{_md_table(t)}\n" for m, t in by_layer.items())
    drift_html = "".join(f"<h3>{html.escape(m)}</h3>" + t.to_html(index=False)
                         for m, t in by_layer.items())  # fmt: skip
    drift_head = ("## Input drift per layer (scale-free, at each normalizer's best lr; "
                  "mean ± 95% t half-width over the seeds that did not diverge)\n")  # fmt: skip
    summ, eff = summary(ps), verdicts(ps)
    summ.to_csv(paths["summary.csv"], index=False)
    eff.to_csv(paths["verdicts.csv"], index=False, float_format="%.6g")
    fig = figure(eff)
    fig.savefig(paths["figure"], dpi=110)
    claims = "\n".join(f"- **{c}**: the normalizer {w} than none ({src}; {_AT[at]})"
                       for c, (_, _, w, src, at) in CLAIMS.items())  # fmt: skip
    doc = (__doc__ or "").split("\n\n", 1)[1]
    vt = _verdict_table(eff)
    md = [f"# {title}\n", setup + "\n", f"Target accuracy: {target}; "
          f"lr tolerance: within {TOLERANCE} of the best mean accuracy.\n", "## Claims\n",
          claims + "\n", "![overview](figures/atlas.png)\n", "## Per architecture and normalizer "
          "(at the best lr on validation)\n", _md_table(summ) + "\n",
          "## Where each claim holds (normalizers for which the verdict is holds)\n",
          _md_table(where_it_holds(eff)) + "\n",
          "## Verdicts (effect = normalizer - none, paired by seed)\n", _md_table(vt) + "\n",
          *([drift_head, drift_md] if by_layer else []), "## Definitions\n", doc]  # fmt: skip
    paths["report.md"].write_text("\n".join(md))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    img = base64.b64encode(buf.getvalue()).decode()
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
            "padding:3px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(setup)}</p><h2>Claims</h2><ul>"
            + "".join(f"<li><b>{html.escape(c)}</b>: the normalizer {html.escape(w)} than none "
                      f"({html.escape(s)}; {_AT[at]})</li>" for c, (_, _, w, s, at) in CLAIMS.items())
            + f"</ul><img alt='overview' src='data:image/png;base64,{img}'>"
            "<h2>Per architecture and normalizer</h2>" + summ.to_html(index=False)
            + "<h2>Where each claim holds</h2>" + where_it_holds(eff).to_html(index=False)
            + "<h2>Verdicts</h2>" + vt.to_html(index=False)
            + (f"<h2>{html.escape(drift_head[3:].strip())}</h2>" + drift_html if by_layer else "")
            + f"<h2>Definitions</h2><pre>{html.escape(doc)}</pre></body></html>")  # fmt: skip
    paths["report.html"].write_text(page)
    return paths
