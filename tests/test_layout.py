"""The package's shape: no module over 400 lines, no import circle, and each stage
imports only the stages below it (the folder tree reads as the data flow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bnlab"
MAX_LINES = 400

# Each stage and the stages it may import (besides itself). Read bottom-up: the config,
# then data, norm and measures, the models, the engine, the record, then what reads or
# drives them. `errors` is the one module every stage shares.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "data": {"errors"},
    "norm": {"errors"},
    "measure": set(),
    "models": {"errors", "norm", "measure"},
    "engine": {"errors", "config", "models", "measure"},
    "record": {"errors", "config"},
    "loggers": {"errors", "config", "record"},
    "analysis": {"errors", "record"},
    "run": {"errors", "config", "data", "models", "engine", "record", "loggers", "analysis"},
    "train": {"errors", "config", "record", "run"},
    "report": {"analysis"},
    "api": {"errors", "config", "record", "run", "analysis", "engine", "models"},
    "__init__": set(),
}


def modules() -> dict[str, Path]:
    """``bnlab.x.y`` -> its file, for every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The bnlab modules ``path`` imports, at any depth (lazy imports in functions and
    ``if TYPE_CHECKING:`` blocks included: a circle there is a circle in the design)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("bnlab"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                if base.startswith("bnlab"):
                    for a in child.names:  # `from bnlab.x import y`: y may be a module
                        sub = f"{base}.{a.name}"
                        found.add(sub if sub in known else base)
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_400_lines(name):
    n = len(modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (at most {MAX_LINES}): split it along a seam"


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n] if n in path else [m, n]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if n not in state:
                walk(n, path + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            walk(m, [m])


def test_each_stage_imports_only_the_stages_below_it():
    bad = []
    for m, deps in graph().items():
        s = stage(m)
        assert s in ALLOWED, f"{m}: stage {s!r} is not in this test's map; add it where it belongs"
        bad += [f"{m} imports {d}" for d in sorted(deps)
                if stage(d) != s and stage(d) not in ALLOWED[s]]  # fmt: skip
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


def test_analysis_never_imports_the_engine():
    for m, deps in graph().items():
        if stage(m) == "analysis":
            assert not {d for d in deps if stage(d) in ("engine", "run")}, m


def test_the_check_sees_imports():
    """The graph is not empty by accident: known edges are found."""
    g = graph()
    assert "bnlab.engine.step" in g["bnlab.engine.chunk"]
    assert "bnlab.record.tables" in g["bnlab.analysis.report"]
    assert "bnlab.analysis.report" in g["bnlab.run.session"]  # a lazy import, in a function
