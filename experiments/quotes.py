"""README numbers, written from and checked against the committed per-seed tables.

    uv run python experiments/quotes.py           # rewrite every quoted number in place
    uv run python experiments/quotes.py --check   # exit 1 if any number or verdict is stale

Every number that ``README.md`` (its Findings) and ``experiments/*/README.md`` quote
from an experiment sits between markers that say where it comes from, invisible when
the markdown is rendered::

    <!--q fig1 final_test_accuracy norm=bn lr=2-->0.8480 ± 0.0068<!--/q-->

A spec is a table (:data:`TABLES`: a committed per-seed csv), a column and filters
``key=value[,value...]`` on the table's rows (one row per run: seed x configuration);
the text is the mean over the matching rows with its 95% Student-t interval
(:func:`bnlab.analysis.stats.format_interval`; ``(n=..., ...)`` is kept whenever n is
not the number of matching rows or the interval is not a t interval). Options:
``@geo`` (geometric mean, interval on the logs), ``@count=COL:VALUE`` (``k of n``
rows where COL is VALUE), ``@maxlr=COL>X`` (the largest lr at which every matching row
has COL > X), ``@bestlr`` (the lr with the highest mean of the column, a diverged run
counting 0: the lr chosen on validation), ``@max`` (the largest value), ``@absmax`` (the largest |value|), ``@mean`` (the mean alone, 2 significant digits), ``@value`` (one row's
value, 2 significant digits), ``@effect`` (one row of a table with ``effect``, ``lo``,
``hi``: the atlas's verdicts, which ``tests/test_atlas.py`` recomputes from its per-seed
table), ``@verdict`` (that row's verdict word). In a draft, ``{{spec}}`` is turned into a marked quote by the rewrite.

Every verdict rests on checks that the tables must pass::

    <!--check fig1 first_step_acc_ge_0_8 lr=0.5 | norm=bn < norm=none-->

``A < B``: A's interval lies entirely below B's; ``A > B`` above; ``A ~ B``: they
overlap; B may be a number (write ``\\|`` for ``|`` inside a markdown table). A README whose table changed fails ``--check`` (``tests/test_findings.py``),
so no stale number or verdict survives a re-run. Reads only the committed csvs: cheap.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bnlab.analysis.stats import aggregate, format_interval  # noqa: E402

EXP = ROOT / "experiments"
TABLES = {
    "fig1": EXP / "ioffe2015_fig1" / "summary.csv",
    "fig1_drift": EXP / "ioffe2015_fig1" / "drift.csv",
    "fig1_gb": EXP / "ioffe2015_fig1" / "gamma_beta.csv",
    "statgrad": EXP / "ioffe2015_sec2_statgrad" / "summary.csv",
    "shape": EXP / "ioffe2015_sec2_statgrad" / "sweep_shape.csv",
    "santurkar": EXP / "santurkar2018" / "summary.csv",
    "lrtol": EXP / "lr_tolerance" / "summary.csv",
    "lrtol_early": EXP / "lr_tolerance" / "summary_early.csv",
    "depth": EXP / "bjorck2018_depth" / "depth.csv",
    "record": EXP / "sampling" / "sampling.csv",
    "atlas": EXP / "atlas" / "report" / "cpu" / "per_seed.csv",
    "atlas_verdicts": EXP / "atlas" / "report" / "cpu" / "verdicts.csv",
}
FILES = [ROOT / "README.md", *sorted(EXP.glob("*/README.md"))]
Q = re.compile(r"<!--q (?P<spec>.*?)-->(?P<text>.*?)<!--/q-->", re.S)
CHECK = re.compile(r"<!--check (?P<spec>.*?)-->")
DRAFT = re.compile(r"\{\{(?P<spec>.*?)\}\}")  # {{spec}} in a draft: becomes <!--q spec-->
_cache: dict[str, pd.DataFrame] = {}


class Stale(AssertionError):
    """A quoted number or a verdict that the committed tables no longer give."""


def table(name: str) -> pd.DataFrame:
    if name not in TABLES:
        raise Stale(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    if name not in _cache:
        _cache[name] = pd.read_csv(TABLES[name])
    return _cache[name]


def _match(col: pd.Series, values: list[str]) -> pd.Series:
    try:
        nums = [float(v) for v in values]
        x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        return pd.Series(np.isclose(x[:, None], nums).any(axis=1), index=col.index)
    except ValueError:
        return col.astype(str).isin(values)


def select(tokens: list[str]) -> tuple[pd.DataFrame, str, list[str]]:
    """``table column key=v ...`` -> (matching rows, column, options)."""
    df = table(tokens[0])
    col = tokens[1]
    opts = []
    for t in tokens[2:]:
        if t.startswith("@"):
            opts.append(t)
            continue
        key, _, vals = t.partition("=")
        if key not in df.columns:
            raise Stale(f"{tokens[0]}: no column {key!r}")
        df = df[_match(df[key], vals.split(","))]
    if col not in df.columns and not col.startswith("@"):
        raise Stale(f"{tokens[0]}: no column {col!r}")
    if not len(df):
        raise Stale(f"{' '.join(tokens)}: no rows match")
    return df, col, opts


def interval(df: pd.DataFrame, col: str, geo: bool = False) -> dict:
    """mean, lo, hi, n, method of a column (geometric: on log10 of the positive values)."""
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    if geo:
        v = np.log10(np.where(v > 0, v, np.nan))
    a = aggregate(pd.DataFrame({"v": v}), "v").iloc[0].to_dict()
    if geo:
        for k in ("mean", "lo", "hi"):
            a[k] = 10 ** a[k]
    a["rows"] = len(df)
    return a


def _g(x: float) -> str:
    """3 significant digits; thousands written out with commas (5,800, not 5.8e+03)."""
    if abs(x) < 1000:
        return f"{x:.3g}"
    return f"{float(f'{x:.3g}'):,.0f}"


def quote(spec: str) -> str:
    """The text a ``<!--q spec-->`` stands for."""
    df, col, opts = select(spec.split())
    for o in opts:
        if o.startswith("@count="):
            c, _, val = o[len("@count=") :].partition(":")
            return f"{int(_match(df[c], [val]).sum())} of {len(df)}"
        if o.startswith("@maxlr="):
            c, _, x = o[len("@maxlr=") :].partition(">")
            ok = df.assign(_ok=pd.to_numeric(df[c], errors="coerce").gt(float(x)))
            good = ok.groupby("lr")["_ok"].all()
            return f"{good[good].index.max():g}" if good.any() else "none"
        if o == "@bestlr":  # the lr with the highest mean of col (a diverged run counts 0)
            v = df.assign(_v=pd.to_numeric(df[col], errors="coerce").fillna(0.0))
            m = v.groupby("lr")["_v"].mean()
            return f"{m.idxmax():g}"
        if o == "@max":  # the largest value over the matching rows, 2 significant digits
            return f"{pd.to_numeric(df[col], errors='coerce').max():.2g}"
        if o == "@absmax":  # the largest |value| over the matching rows
            return f"{pd.to_numeric(df[col], errors='coerce').abs().max():.2g}"
        if o == "@mean":  # the mean alone, 2 significant digits (rounding-level values)
            return f"{pd.to_numeric(df[col], errors='coerce').mean():.2g}"
        if o in ("@effect", "@verdict"):  # one row of the atlas's verdicts table
            if len(df) != 1:
                raise Stale(f"{spec}: {o} needs exactly one row, found {len(df)}")
            r = df.iloc[0]
            if o == "@verdict":
                return str(r["verdict"])
            return f"{_g(r['effect'])} [{_g(r['lo'])}, {_g(r['hi'])}]"
        if o == "@value":
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            if len(v) != 1:
                raise Stale(f"{spec}: @value needs exactly one row, found {len(v)}")
            return f"{v[0]:.2g}"
    a = interval(df, col, geo="@geo" in opts)
    if "@geo" in opts:  # a std of exactly 0 has no log: left out, and said so
        zeros = int(pd.to_numeric(df[col], errors="coerce").eq(0).sum())
        note = f"; {zeros} of {a['rows']} exactly 0, left out" if zeros else ""
        if a["n"] == 0:
            return f"n/a (n=0{note})"
        full = a["n"] == a["rows"] and a["method"] == "t"
        how = "" if full else f" (n={a['n']}, {a['method']}{note})"
        return f"{_g(a['mean'])} [{_g(a['lo'])}, {_g(a['hi'])}]{how}"
    text = format_interval(a)
    if a["n"] == a["rows"] and a["method"] == "t":
        text = text.rsplit(" (n=", 1)[0]
    return text


def check(spec: str) -> None:
    """Raise :class:`Stale` unless the relation of a ``<!--check ...-->`` holds."""
    common, _, rel = spec.replace("\\|", "|").partition("|")  # "\|" inside a markdown table
    m = re.fullmatch(r"\s*(.*?)\s+([<>~])\s+(.*?)\s*", rel)
    if not m:
        raise Stale(f"check {spec!r}: write 'TABLE COL FILTERS | A < B' (or >, ~)")
    base = common.split()
    geo = "@geo" in base
    ia = interval(select(base + m[1].split())[0], base[1], geo)
    try:  # a number: the interval against that value
        x = float(m[3])
        ib = {"lo": x, "hi": x, "n": 1}
    except ValueError:
        ib = interval(select(base + m[3].split())[0], base[1], geo)
    if min(ia["n"], ib["n"]) == 0 or not all(
        math.isfinite(x) for x in (ia["lo"], ia["hi"], ib["lo"], ib["hi"])
    ):
        raise Stale(f"check {spec!r}: no interval on one side")
    below, above = ia["hi"] < ib["lo"], ia["lo"] > ib["hi"]
    ok = {"<": below, ">": above, "~": not (below or above)}[m[2]]
    if not ok:
        raise Stale(
            f"verdict no longer holds: {spec!r}: [{ia['lo']:.4g}, {ia['hi']:.4g}] vs "
            f"[{ib['lo']:.4g}, {ib['hi']:.4g}]"
        )


def render(text: str) -> str:
    """``text`` with every quoted number rewritten from the tables (checks untouched);
    a draft's ``{{spec}}`` becomes a marked quote."""
    text = DRAFT.sub(lambda m: f"<!--q {m['spec']}--><!--/q-->", text)
    return Q.sub(lambda m: f"<!--q {m['spec']}-->{quote(m['spec'])}<!--/q-->", text)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def problems(path: Path) -> list[str]:
    """What is stale in one markdown file: numbers that differ, checks that fail."""
    text = path.read_text()
    out = []
    for m in Q.finditer(text):
        try:
            new = quote(m["spec"])
        except Stale as e:
            out.append(f"{_name(path)}: {e}")
            continue
        if new != m["text"]:
            out.append(f"{_name(path)}: {m['spec']!r} says {m['text']!r}, the table {new!r}")
    for m in CHECK.finditer(text):
        try:
            check(m["spec"])
        except Stale as e:
            out.append(f"{_name(path)}: {e}")
    return out


def unsourced(path: Path) -> list[str]:
    """Intervals (``±`` or ``[lo, hi]`` after a number) outside ``<!--q-->`` markers and
    code blocks, in an experiment README or the README's Findings and atlas sections."""
    text = path.read_text()
    if path == ROOT / "README.md":
        text = "\n".join(text.split(f"## {h}", 1)[1].split("\n## ", 1)[0]
                         for h in ("Findings", "The atlas"))  # fmt: skip
    text = re.sub(r"```.*?```", "", Q.sub("", text), flags=re.S)
    bad = re.compile(r"\d\s*±|\d \[[\d.,\s]+\]")
    return [f"{_name(path)}: unsourced interval in {ln.strip()[:90]!r}"
            for ln in text.splitlines() if bad.search(ln)]  # fmt: skip


def main() -> int:
    if "--check" in sys.argv[1:]:
        errs = [e for p in FILES for e in problems(p) + unsourced(p)]
        print("\n".join(errs) or f"all numbers and verdicts of {len(FILES)} files hold")
        return 1 if errs else 0
    for p in FILES:
        old = p.read_text()
        new = render(old)
        if new != old:
            p.write_text(new)
            print(f"rewrote {p.relative_to(ROOT)}")
    errs = [e for p in FILES for e in problems(p)]
    print("\n".join(errs))
    return 1 if errs else 0


if __name__ == "__main__":
    raise SystemExit(main())
