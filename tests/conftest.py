"""Shared pytest plumbing (keep it generic)."""


def pytest_terminal_summary(terminalreporter):
    """Print every ``record_property("summary", text)`` in a closing section.

    Tests use it for numbers worth reading in CI logs (e.g. worst errors seen);
    properties travel back from pytest-xdist workers, so this works with ``-n``.
    """
    lines = [
        f"{rep.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for rep in reports
        if getattr(rep, "when", None) == "call"
        for key, value in getattr(rep, "user_properties", ())
        if key == "summary"
    ]
    if lines:
        terminalreporter.section("summaries")
        for line in lines:
            terminalreporter.write_line(line)
