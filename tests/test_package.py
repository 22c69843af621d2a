"""The package runs anywhere: the wheel in a fresh environment outside the checkout,
its console scripts, tab completion, --help, and a quiet --info/--cfg."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from trainer import COMPILE_CACHE, ROOT, cli

UV = shutil.which("uv")


def uv(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    res = subprocess.run([UV, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=env)  # fmt: skip
    assert res.returncode == 0, f"uv {' '.join(args)}:\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment outside the checkout with the built wheel and its
    dependencies, offline: the dependencies pinned as in uv.lock (``uv export``), from
    uv's cache (``--offline``; ``--no-deps`` because the export is the whole closure,
    which ``uv pip check`` then confirms)."""
    assert UV, "uv is not on PATH"
    tmp = tmp_path_factory.mktemp("wheel")
    uv("build", "--wheel", "-o", str(tmp / "dist"))
    (wheel,) = (tmp / "dist").glob("bnlab-*.whl")
    uv("export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-q",
       "-o", str(tmp / "requirements.txt"))  # fmt: skip
    venv = tmp / "venv"
    uv("venv", "-q", "--python", sys.executable, str(venv))
    py = str(venv / "bin" / "python")
    uv("pip", "install", "-q", "--no-deps", "--python", py,
       "-r", str(tmp / "requirements.txt"), str(wheel))  # fmt: skip
    uv("pip", "check", "--python", py)
    return venv


def run(venv: Path, cmd: str, *args: str, cwd: Path, timeout: float = 600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    return subprocess.run([str(venv / "bin" / cmd), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


@pytest.mark.slow
def test_wheel_trains_and_plots_outside_the_checkout(installed, tmp_path):
    where = run(installed, "python", "-c", "import bnlab.train as t; print(t.config_dir())",
                cwd=tmp_path)  # fmt: skip
    assert where.stdout.strip() == str(next(installed.glob("lib/python*/site-packages/bnlab"))
                                       / "configs"), where.stderr  # fmt: skip
    res = run(installed, "bnlab-train", "data=digits", "steps=200", "chunk_steps=100",
              "eval_every=100", "progress=false", f"compile_cache={COMPILE_CACHE}",
              "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 200
    plot = run(installed, "bnlab-plot", "run", cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    pngs = [Path(line) for line in plot.stdout.split()]
    assert pngs and all((tmp_path / p).stat().st_size > 0 for p in pngs)
    # the loggers are extras, not installed here: one line naming the install command
    res = run(installed, "bnlab-train", "data=digits", "logger=[csv,tensorboard]",
              "hydra.run.dir=refused", cwd=tmp_path, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "bnlab: error: logger=tensorboard needs the extra 'tensorboard': "
            "uv sync --extra tensorboard"
        )
    )
    assert not (tmp_path / "refused" / "summary.json").exists()  # refused before it ran
    assert not (tmp_path / "refused" / ".hydra").exists()


def test_help_lists_the_groups(tmp_path):
    res = cli(["--help"], timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "logger: csv, mlflow, tensorboard, wandb" in lines
    assert "model: cnn, mlp, own, resnet, vgg" in lines  # no preset schemas listed as models
    assert any(line.startswith("norm: batch_renorm, bn, ") for line in lines)
    assert len(lines) < 30


def test_tab_completion_of_the_console_script():
    exe = Path(sys.executable).with_name("bnlab-train")
    script = subprocess.run([exe, "-sc", "install=bash"], capture_output=True, text=True,
                            timeout=120, check=True).stdout  # fmt: skip
    assert "complete" in script and "bnlab-train" in script
    res = subprocess.run(
        ["bash", "-c", f'eval "$1"; COMP_LINE="{exe.name} norm=bn_no" COMP_POINT=22 COMP_CWORD=1;'
         ' hydra_bash_completion; echo "${COMPREPLY[@]}"', "-", script],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert set(res.stdout.split()) == {
        "norm=bn_noaffine", "norm=bn_noisy", "norm=bn_nostatgrad", "norm=bn_nostatgrad_meanonly"
    }, res.stderr  # fmt: skip


@pytest.mark.parametrize("flag", ["--info", "--cfg"])
def test_info_and_cfg_print_once(flag):
    args = [flag] if flag == "--info" else [flag, "job"]
    res = cli(args, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = (res.stdout + res.stderr).splitlines()
    needle = "Installed Hydra Plugins" if flag == "--info" else "steps: 50000"
    assert lines.count(needle) == 1, lines
    both = cli(["-m", *args], timeout=120)  # one line, not Hydra's traceback
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert both.stderr.strip().startswith("bnlab: error: Only one of --run, --multirun")


def test_importing_orbax_adds_no_root_handler():
    code = (
        "import logging, bnlab.record.checkpoint; bnlab.record.checkpoint._ocp(); "
        "print(len(logging.getLogger().handlers))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert res.stdout.strip() == "0", res.stderr
