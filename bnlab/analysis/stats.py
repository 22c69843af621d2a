"""Means over seeds with an interval: the numbers behind a claim about training.

A claim that one configuration trains better than another needs several seeds and
an interval. :func:`aggregate` groups a table by the keys that name a configuration
and gives, per group, the mean over the rows (one row per seed: a run's final
accuracy, or a run's value at one step) with an interval chosen by ``errorbar``,
named after seaborn's argument of the same name:

- ``("ci", 95)`` (the default): a 95% Student-t confidence interval of the mean,
  ``mean ± t(0.975, n-1) * sd / sqrt(n)``, where there are at least
  :data:`MIN_T` = 5 values; with fewer (1 to 4) the t interval is too wide to say
  much and leans on normality it cannot check, so the interval is the **min-max**
  range of the values instead (method ``min-max``, not a confidence interval);
- ``"sd"`` / ``("sd", k)``: mean ± k standard deviations of the values (their spread,
  not the uncertainty of the mean); ``"se"`` / ``("se", k)``: mean ± k standard errors;
- ``("pi", 95)``: the 2.5th to 97.5th percentile of the values;
- ``"minmax"``: the smallest to the largest value, whatever n;
- ``None``: the mean alone (``lo`` and ``hi`` NaN).

The output has the group keys, then ``mean``, ``lo``, ``hi``, ``n`` (finite values in
the group), ``method`` (``t``, ``min-max``, ``sd``, ``se``, ``pi`` or ``none``) and
``level`` (the interval's percent for ``t`` and ``pi``, else NaN).
:func:`format_interval` writes one row for a README table:
``0.8690 ± 0.0040 (n=5, 95% t)`` or ``0.860 [0.850, 0.870] (n=3, min-max)``.

Non-finite values (a diverged run's NaN) are left out and do not count in ``n``.
Pure pandas and scipy; imports nothing of bnlab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MIN_T", "ERRORBAR", "aggregate", "format_interval", "describe", "parse_errorbar"]

MIN_T = 5  # fewest values for a t interval; below it ("ci", ...) gives the min-max range
ERRORBAR = ("ci", 95)
OUT_COLUMNS = ["mean", "lo", "hi", "n", "method", "level"]
_KINDS = {"ci": 95.0, "pi": 95.0, "sd": 1.0, "se": 1.0, "minmax": None, "min-max": None}


def parse_errorbar(errorbar: Any) -> tuple[str, float | None] | None:
    """``("ci", 95)``, ``"sd"``, ``("pi", 50)``, ``"minmax"``, ``None`` -> ``(kind, param)``."""
    if errorbar is None:
        return None
    kind, param = (errorbar, None) if isinstance(errorbar, str) else tuple(errorbar)
    if kind not in _KINDS:
        raise ValueError(
            f"errorbar {errorbar!r}: use ('ci', level), ('pi', level), 'sd', 'se', 'minmax' or None"
        )
    kind = "minmax" if kind == "min-max" else kind
    param = _KINDS[kind] if param is None else float(param)
    if kind in ("ci", "pi") and not 1 < param < 100:  # 0.95 is a fraction, not a percent
        raise ValueError(f"errorbar {errorbar!r}: the level is a percent (e.g. 95), 1 to 100")
    return kind, param


def aggregate(
    table: pd.DataFrame,
    value: str = "value",
    by: str | Sequence[str] = (),
    *,
    units: str | None = None,
    errorbar: Any = ERRORBAR,
) -> pd.DataFrame:
    """Mean and interval of ``value`` per group of ``by`` (see the module docstring).

    Each row is one replicate (a seed). With ``units`` (e.g. ``"run"``) the rows are
    first averaged within each unit, so that a unit with several rows counts once.
    Groups keep their order of first appearance; a group with no finite value has
    ``n`` 0 and NaN mean. Returns the ``by`` columns and :data:`OUT_COLUMNS`.
    """
    spec = parse_errorbar(errorbar)
    by = [by] if isinstance(by, str) else list(by)
    v = pd.to_numeric(table[value], errors="coerce").astype("float64")
    df = table[by].copy()
    df["_v"] = v.where(np.isfinite(v))
    if units is not None:
        df["_u"] = table[units].to_numpy()
        df = df.groupby([*by, "_u"], sort=False, dropna=False)["_v"].mean().reset_index()
    if not by:
        df["_all"] = 0
    keys = by or ["_all"]
    g = df.groupby(keys, sort=False, dropna=False)["_v"]
    out = g.agg(mean="mean", sd="std", n="count", min="min", max="max")
    mean, sd, n = out["mean"], out["sd"], out["n"]
    lo = pd.Series(np.nan, index=out.index)
    hi = pd.Series(np.nan, index=out.index)
    method = pd.Series("none", index=out.index, dtype=object)
    level = pd.Series(np.nan, index=out.index)
    if spec is not None:
        kind, param = spec
        if kind == "ci":
            from scipy.stats import t as student_t

            use_t = n >= MIN_T
            q = student_t.ppf(0.5 + param / 200, np.maximum(n - 1, 1))
            hw = q * sd / np.sqrt(n)
            lo = mean - hw
            hi = mean + hw
            lo[~use_t], hi[~use_t] = out["min"][~use_t], out["max"][~use_t]
            method[:] = np.where(use_t, "t", "min-max")
            level[use_t] = param
        elif kind in ("sd", "se"):
            hw = param * (sd if kind == "sd" else sd / np.sqrt(n))
            lo, hi = mean - hw, mean + hw
            method[:] = kind if param == 1 else f"{param:g} {kind}"
        elif kind == "pi":
            lo = g.quantile(0.5 - param / 200)
            hi = g.quantile(0.5 + param / 200)
            method[:] = "pi"
            level[:] = param
        else:  # minmax
            lo, hi = out["min"], out["max"]
            method[:] = "min-max"
    empty = n == 0
    method[empty] = "none"
    level[empty] = np.nan
    res = pd.DataFrame(
        {"mean": mean, "lo": lo, "hi": hi, "n": n.astype("int64"), "method": method, "level": level}
    )
    res = res.reset_index()
    return res.drop(columns=["_all"]) if not by else res


def format_interval(row: Mapping[str, Any] | pd.Series, *, unit: str = "") -> str:
    """One aggregated row (:func:`aggregate`) as text for a table.

    ``0.8690 ± 0.0040 (n=5, 95% t)`` for a symmetric interval (t, sd, se),
    ``0.860 [0.850, 0.870] (n=3, min-max)`` otherwise, ``0.869 (n=1)`` for one value.
    Decimals follow the interval: two significant digits of its half-width.
    """
    mean, lo, hi = (float(row[k]) for k in ("mean", "lo", "hi"))
    n, method = int(row["n"]), str(row["method"])
    level = row.get("level", math.nan)
    if n == 0 or not math.isfinite(mean):
        return f"n/a (n={n})"
    if n == 1 or method == "none" or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.{_decimals(0.0, mean)}f}{unit} (n={n})"
    name = f"{float(level):g}% {method}" if level is not None and _finite(level) else method
    symmetric = method in ("t", "sd", "se") or method.endswith((" sd", " se"))
    spread = (hi - lo) / 2
    d = _decimals(spread, mean)
    if symmetric:
        return f"{mean:.{d}f} ± {spread:.{d}f}{unit} (n={n}, {name})"
    return f"{mean:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]{unit} (n={n}, {name})"


def describe(errorbar: Any) -> str:
    """What the band of ``errorbar`` is, in words (for legends and titles)."""
    spec = parse_errorbar(errorbar)
    if spec is None:
        return "mean, no band"
    kind, p = spec
    return {
        "ci": f"{p:g}% t interval of the mean (min-max where n < {MIN_T})",
        "pi": f"{p:g}% percentile interval",
        "sd": f"mean ± {p:g} sd",
        "se": f"mean ± {p:g} standard errors",
        "minmax": "min-max range",
    }[kind]


def methods_label(methods: Sequence[str], level: float | None = None) -> str:
    """``95% t``, ``min-max`` or ``95% t / min-max``: the methods used, in order, once each."""
    names = []
    for m in dict.fromkeys(methods):
        if m == "none":
            continue
        names.append(f"{level:g}% {m}" if m in ("t", "pi") and level is not None else m)
    return " / ".join(names)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _decimals(spread: float, mean: float) -> int:
    """Decimals that show ``spread`` to two significant digits (one digit understates
    some half-widths by up to 25%: 0.25 as 0.2); 3 significant of ``mean`` when the
    spread is 0."""
    if spread > 0 and math.isfinite(spread):
        return int(min(10, max(0, 1 - math.floor(math.log10(spread)))))
    if mean == 0:
        return 3
    return int(min(10, max(0, 2 - math.floor(math.log10(abs(mean))))))
