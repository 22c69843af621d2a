"""The notebooks run top to bottom both ways, and are stored without outputs.

Like papermill: a cell with the test's parameters goes right after the cell tagged
``parameters``; the notebook then runs in a ``python3`` kernel of this interpreter.
Fresh (``SWEEP_DIR = ""``) it trains real (tiny) runs on scikit-learn's digits through
``bnlab.analysis.runs.demo_sweep`` (``python -m bnlab.train``); pointed at a record
(``SWEEP_DIR``) it reads that record, here one the test writes with several seeds,
and trains nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from test_runs import fake_sweep

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))

SMALL = {"DATA": "digits", "OVERRIDES": ["probe.every=50", "chunk_steps=100", "eval_every=100"]}
PARAMS = {
    "activation_drift.ipynb": {**SMALL, "STEPS": 200},
    "lr_sweep.ipynb": {**SMALL, "STEPS": 100, "LRS": [0.5, 50.0], "SEEDS": 2, "TARGET": 0.3},
}
FIGURES = {"activation_drift.ipynb": 5, "lr_sweep.ipynb": 2}


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def inject(nb, params: dict):
    """Insert a cell assigning ``params`` after the parameters cell (papermill's way)."""
    src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    i = _parameters_index(nb)
    nb.cells.insert(i + 1, cell)
    return nb


def execute(path: Path, params: dict, cwd: Path, timeout: int = 600):
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
    from nbclient import NotebookClient

    nb = inject(nbformat.read(path, as_version=4), params)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=NATIVE_KERNEL_NAME,  # "python3": ipykernel's, on this interpreter
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
    )
    # make sure the kernel is this interpreter (the venv), not some python3 on PATH
    client.kernel_manager_class = _manager_for(sys.executable)
    client.execute()
    return nb


def _manager_for(python: str):
    from jupyter_client.manager import KernelManager

    class _Here(KernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            return [python, *cmd[1:]] if cmd and "python" in Path(cmd[0]).name else cmd

    return _Here


def _text(nb) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for c in nb.cells:
        for out in c.get("outputs", []) if c.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.get("outputs", [])
    )


def _errors(nb) -> list[str]:
    return [
        f"{out.get('ename')}: {out.get('evalue')}"
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def test_notebooks_present():
    assert {p.name for p in ALL} == set(PARAMS)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    _parameters_index(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{path.name} has outputs"
    text = path.read_text()
    assert "PLACEHOLDER" not in text
    params = nb.cells[_parameters_index(nb)].source
    assert 'SWEEP_DIR = ""' in params, "an empty SWEEP_DIR parameter: train, else read"
    # one helper trains, in bnlab.analysis.runs; no copy of it (or of subprocess) in the notebook
    assert "runs.demo_sweep(" in text and "subprocess" not in text


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    """Fresh, from a directory outside the checkout: the notebook trains its sweep
    into OUT (relative to its working directory), then shows every figure. (Reusing
    a finished sweep: tests/test_runs.py::test_demo_sweep_reuses_...)"""
    params = {**PARAMS[path.name], "OUT": "out"}
    nb = execute(path, params, cwd=tmp_path)
    assert not _errors(nb), _errors(nb)
    assert _images(nb) == FIGURES[path.name], "the notebook should show each of its figures"
    # the runs it trained are where OUT says (lr_sweep: vectorized members in each job)
    if path.name == "activation_drift.ipynb":
        runs = sorted((tmp_path / "out").glob("*/*/summary.json"))
        assert len(runs) == 2
    else:
        runs = sorted((tmp_path / "out").glob("*/*/*/summary.json"))
        p = PARAMS[path.name]
        assert len(runs) == 3 * len(p["LRS"]) * p["SEEDS"]
        assert "(n=2, min-max)" in _text(nb)  # the table of means over the 2 seeds


# a record with 5 seeds per configuration (the runs differ in accuracy by seed), of a
# user's own model (sites by module path: BatchNorm_{i}/in|out, then head/in)
RECORDS = {
    "activation_drift.ipynb": dict(norms=("none", "bn"), lrs=(0.5,)),
    "lr_sweep.ipynb": dict(norms=("none", "bn", "bn_noaffine"), lrs=(0.5, 2.0)),
}


@pytest.mark.parametrize("how", ["environment", "papermill"])
@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebook_reads_a_record(path, how, tmp_path, monkeypatch):
    """Pointed at an existing record of a user's own model, by SWEEP_DIR in the
    environment (the parameters cell left empty) or by papermill's -p, from a
    directory outside the checkout, the notebook reads it, trains nothing, draws the
    seeds' means with their intervals, and its drift site comes from the record (the
    last norm layer's input, not the head's) unless SITE says otherwise."""
    record = fake_sweep(tmp_path / "record", seeds=range(5), own=True, **RECORDS[path.name])
    work = tmp_path / "elsewhere"
    work.mkdir()
    drift = path.name == "activation_drift.ipynb"
    if how == "environment":
        monkeypatch.setenv("SWEEP_DIR", str(record))
        nb = execute(path, {"OUT": "out"}, cwd=work)
    else:
        import papermill as pm

        params = {"SWEEP_DIR": str(record), "OUT": "out", **({"SITE": "out"} if drift else {})}
        pm.execute_notebook(str(path), str(tmp_path / "ran.ipynb"), parameters=params,
                            cwd=str(work), progress_bar=False, kernel_name="python3")  # fmt: skip
        nb = nbformat.read(tmp_path / "ran.ipynb", as_version=4)
    assert not _errors(nb), _errors(nb)
    assert _images(nb) == FIGURES[path.name]
    assert not (work / "out").exists(), "a notebook pointed at a record must not train"
    text = _text(nb)
    assert f"reading the record in {record}" in text
    assert "(n=5, 95% t)" in text  # the final accuracies as mean ± interval
    if drift:
        assert f"drift of BatchNorm_2/{'in' if how == 'environment' else 'out'}" in text
