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


def pytest_configure(config):
    """Every test process (each xdist worker) keeps JAX's compiled programs in the
    session's compilation cache, as the runs it starts do (``compile_cache=`` in
    ``trainer.QUICK``): an in-process run of a config compiled before loads its
    programs instead of compiling them again (~25 s -> ~5 s for a small run)."""
    import jax
    from trainer import COMPILE_CACHE

    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
