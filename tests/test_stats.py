"""Means over seeds and their intervals (bnlab.analysis.stats), against numbers worked by hand
and scipy's."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnlab.analysis.stats import aggregate, describe, format_interval, parse_errorbar

FIVE = [0.861, 0.874, 0.866, 0.872, 0.869]  # mean 0.8684, sd 0.005128...


def _table(groups: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([(k, v) for k, vs in groups.items() for v in vs], columns=["config", "acc"])


def test_t_interval_by_hand_and_scipy():
    out = aggregate(_table({"a": FIVE}), "acc", "config").iloc[0]
    # by hand: mean 4.342 / 5; sd from the squared deviations; t(0.975, 4) = 2.776445105
    mean = 4.342 / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in FIVE) / 4)
    hw = 2.7764451051977987 * sd / math.sqrt(5)
    assert out["mean"] == pytest.approx(0.8684)
    assert (out["lo"], out["hi"]) == (pytest.approx(mean - hw), pytest.approx(mean + hw))
    lo, hi = sps.t.interval(0.95, df=4, loc=np.mean(FIVE), scale=sps.sem(FIVE))
    assert (out["lo"], out["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert (out["n"], out["method"], out["level"]) == (5, "t", 95.0)
    # another level
    out = aggregate(_table({"a": FIVE}), "acc", "config", errorbar=("ci", 90)).iloc[0]
    lo, hi = sps.t.interval(0.90, df=4, loc=np.mean(FIVE), scale=sps.sem(FIVE))
    assert (out["lo"], out["hi"], out["level"]) == (pytest.approx(lo), pytest.approx(hi), 90.0)


def test_fewer_than_five_is_min_max_and_groups_keep_order():
    t = _table({"b": [0.85, 0.87, 0.86], "a": FIVE, "c": [0.9]})
    out = aggregate(t, "acc", "config")
    assert list(out["config"]) == ["b", "a", "c"]
    b, a, c = (r for _, r in out.iterrows())
    assert (b["mean"], b["lo"], b["hi"], b["n"]) == (pytest.approx(0.86), 0.85, 0.87, 3)
    assert b["method"] == "min-max" and math.isnan(b["level"])
    assert a["method"] == "t"
    assert (c["mean"], c["lo"], c["hi"], c["n"], c["method"]) == (0.9, 0.9, 0.9, 1, "min-max")


def test_other_errorbars():
    t = _table({"a": FIVE})
    sd = float(np.std(FIVE, ddof=1))
    m = float(np.mean(FIVE))
    r = aggregate(t, "acc", "config", errorbar="sd").iloc[0]
    assert (r["lo"], r["hi"], r["method"]) == (pytest.approx(m - sd), pytest.approx(m + sd), "sd")
    r = aggregate(t, "acc", "config", errorbar=("sd", 2)).iloc[0]
    assert r["hi"] == pytest.approx(m + 2 * sd) and r["method"] == "2 sd"
    r = aggregate(t, "acc", "config", errorbar="se").iloc[0]
    assert r["hi"] == pytest.approx(m + sd / math.sqrt(5)) and r["method"] == "se"
    r = aggregate(t, "acc", "config", errorbar=("pi", 50)).iloc[0]
    assert (r["lo"], r["hi"]) == (pytest.approx(0.866), pytest.approx(0.872))
    assert (r["method"], r["level"]) == ("pi", 50.0)
    r = aggregate(t, "acc", "config", errorbar="minmax").iloc[0]
    assert (r["lo"], r["hi"], r["method"]) == (0.861, 0.874, "min-max")
    r = aggregate(t, "acc", "config", errorbar=None).iloc[0]
    assert r["mean"] == pytest.approx(m) and math.isnan(r["lo"]) and r["method"] == "none"
    with pytest.raises(ValueError, match="errorbar"):
        parse_errorbar("bootstrap")
    with pytest.raises(ValueError, match="percent"):
        parse_errorbar(("ci", 0.95))


def test_non_finite_values_do_not_count_and_units_average_first():
    t = _table({"a": [*FIVE, np.nan, np.inf], "z": [np.nan]})
    out = aggregate(t, "acc", "config").set_index("config")
    assert out.loc["a", "n"] == 5 and out.loc["a", "method"] == "t"
    assert out.loc["z", "n"] == 0 and out.loc["z", "method"] == "none"
    assert math.isnan(out.loc["z", "mean"])
    # two rows of run r1 count as one value (their mean)
    t = pd.DataFrame({"step": [0] * 4, "run": ["r1", "r1", "r2", "r3"], "v": [1.0, 3.0, 4.0, 6.0]})
    r = aggregate(t, "v", "step", units="run").iloc[0]
    assert (r["n"], r["mean"], r["lo"], r["hi"]) == (3, 4.0, 2.0, 6.0)
    # no grouping keys: one row over everything
    r = aggregate(t, "v").iloc[0]
    assert list(aggregate(t, "v").columns) == ["mean", "lo", "hi", "n", "method", "level"]
    assert (r["n"], r["mean"]) == (4, 3.5)


def test_format_interval():
    row = {"mean": 0.869, "lo": 0.865, "hi": 0.873, "n": 5, "method": "t", "level": 95.0}
    assert format_interval(row) == "0.8690 ± 0.0040 (n=5, 95% t)"
    # two significant digits of the half-width: 0.25 is not printed as 0.2 (issue 25)
    row = {"mean": 0.886, "lo": 0.636, "hi": 1.136, "n": 5, "method": "t", "level": 95.0}
    assert format_interval(row) == "0.89 ± 0.25 (n=5, 95% t)"
    row = {"mean": 0.86, "lo": 0.85, "hi": 0.87, "n": 3, "method": "min-max", "level": np.nan}
    assert format_interval(row) == "0.860 [0.850, 0.870] (n=3, min-max)"
    row = {"mean": 0.8694, "lo": 0.8694, "hi": 0.8694, "n": 1, "method": "min-max"}
    assert format_interval(row) == "0.869 (n=1)"
    row = {"mean": 1234.0, "lo": 1084.0, "hi": 1384.0, "n": 6, "method": "t", "level": 95}
    assert format_interval(row) == "1234 ± 150 (n=6, 95% t)"
    assert format_interval({"mean": np.nan, "lo": np.nan, "hi": np.nan, "n": 0, "method": "none"})
    out = aggregate(_table({"a": FIVE}), "acc", "config")
    assert format_interval(out.iloc[0]) == "0.8684 ± 0.0064 (n=5, 95% t)"
    assert "t interval" in describe(("ci", 95)) and "min-max" in describe(("ci", 95))
