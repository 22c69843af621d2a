"""Every number and verdict the READMEs quote from an experiment is recomputed from the
committed per-seed tables (``experiments/quotes.py``): a re-run that changes a table
cannot leave stale text behind. Reads csv files only (about a second)."""

from __future__ import annotations

import sys

import pytest
from trainer import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import quotes  # noqa: E402


@pytest.mark.parametrize("path", quotes.FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_numbers_and_verdicts_match_the_tables(path):
    assert quotes.problems(path) == []


@pytest.mark.parametrize("path", quotes.FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_interval_has_a_source(path):
    """No interval (``±``, ``[lo, hi]``) outside a quote marker in the Findings section
    or an experiment README: each has its per-seed table."""
    assert quotes.unsourced(path) == []


def test_the_findings_quote_every_experiment():
    text = (ROOT / "README.md").read_text()
    findings = text.split("## Findings", 1)[1].split("\n## ", 1)[0]
    used = {m["spec"].split()[0] for m in quotes.Q.finditer(findings)}
    assert {"fig1", "statgrad", "santurkar", "lrtol"} <= used
    assert len(list(quotes.CHECK.finditer(findings))) >= 9  # at least one per row


def test_stale_text_and_a_flipped_verdict_are_caught(tmp_path):
    """A number that the table does not give, and a verdict the table contradicts, fail;
    the rewrite restores the number."""
    md = tmp_path / "README.md"
    right = quotes.quote("statgrad final_test_accuracy norm=bn lr=0.1")
    md.write_text(
        "<!--q statgrad final_test_accuracy norm=bn lr=0.1-->0.9 ± 0.1<!--/q-->\n"
        "<!--check statgrad final_test_accuracy lr=0.1 | norm=bn < norm=bn_nostatgrad-->\n"
        "<!--check statgrad final_test_accuracy lr=0.1 | norm=bn > norm=bn_nostatgrad-->\n"
        "0.5 ± 0.1 by hand\n"
    )
    errs = quotes.problems(md)
    assert len(errs) == 2 and "says '0.9 ± 0.1'" in errs[0] and "no longer holds" in errs[1]
    assert right in quotes.render(md.read_text())
    assert len(quotes.unsourced(md)) == 1  # the hand-written interval
    with pytest.raises(quotes.Stale, match="no column"):
        quotes.quote("statgrad no_such_column norm=bn")
