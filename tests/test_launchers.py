"""Sweeps through real distributed launchers: a Ray head started here (token
authentication on, everything on 127.0.0.1), and submitit's local executor (the SLURM
launcher's plugin without SLURM). Each writes both records and the sweep summary."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path

import pandas as pd
import pytest
from trainer import QUICK, cli

from bnlab.analysis import report
from bnlab.record import tables as record

BASE = [*QUICK, "steps=200", "chunk_steps=100", "eval_every=100"]


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def check_sweep(sweep_dir: Path) -> None:
    """Job 0 (lr 0.5) finished, job 1 (lr 1e6) diverged, and the summary says so."""
    statuses = [json.loads((sweep_dir / str(j) / record.SUMMARY).read_text())["status"]
                for j in (0, 1)]  # fmt: skip
    assert statuses == ["finished", "diverged"]
    summary = pd.read_csv(sweep_dir / report.SUMMARY_CSV)
    assert list(summary["status"]) == ["finished", "diverged"]
    assert list(summary["optimizer.lr"]) == [0.5, 1e6]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head (``ray start --head --block``, its own process group) on 127.0.0.1
    with token authentication; yields the environment a driver needs to join it, and
    stops the head's process group (only it) afterwards."""
    port, client, nm, om, agent, agent_grpc, rt_env, metrics, dash = free_ports(9)
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # the head and its drivers: token authentication
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP 127.0.0.1, not the interface's
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    temp = Path(f"/tmp/bnlab-ray-{os.getpid()}-{port}")  # short: Ray's socket paths
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=100000000",
         "--include-dashboard=false", f"--dashboard-port={dash}", "--disable-usage-stats",
         f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
         f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
         f"--metrics-export-port={metrics}", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(head.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not any("Ray runtime started" in line for line in lines):
            assert head.poll() is None, "".join(lines)
            if time.monotonic() > deadline:
                pytest.fail("the Ray head did not start within 180 s:\n" + "".join(lines))
            time.sleep(1)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(head.pid, signal.SIGKILL)  # its services, if the leader went first
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", str(temp)], check=False)


@pytest.mark.slow
def test_ray_sweep_on_a_running_cluster(tmp_path, ray_head):
    """`RAY_ADDRESS=... python -m bnlab.train -m hydra/launcher=ray_cluster ...` as the
    config documents it: joins the running head (token authentication, no
    object_store_memory refused), runs both jobs there, and writes the summary."""
    sweep_dir = tmp_path / "multirun"
    res = cli(["-m", "hydra/launcher=ray_cluster", *BASE, "optimizer.lr=0.5,1e6",
               f"hydra.sweep.dir={sweep_dir}"], env=ray_head, timeout=420)  # fmt: skip
    assert res.returncode == 0, res.stderr[:6000]
    assert "Connecting to existing Ray cluster at address: 127.0.0.1" in res.stderr
    check_sweep(sweep_dir)


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    """`hydra/launcher=submitit_local`: submitit's local executor, the plugin behind
    hydra/launcher=slurm, runs each job as its own process, without SLURM."""
    sweep_dir = tmp_path / "multirun"
    res = cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
               *BASE, "optimizer.lr=0.5,1e6", f"hydra.sweep.dir={sweep_dir}"],
              timeout=420)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((sweep_dir / ".submitit").glob("*/*_submitted.pkl"))  # submitit ran them
    check_sweep(sweep_dir)


@pytest.mark.parametrize(("steps", "every"), [(50000, 250), (5000, 250), (300, 50), (7, 1)])
def test_optuna_preset_probe_interval_fits_any_steps(steps, every):
    from trainer import compose

    from bnlab import config

    cfg = config.typed(compose(["hparams_search=lr_optuna", f"steps={steps}"]))
    assert cfg.probe.every == every
    config.check(cfg, 1)  # steps and chunk_steps are multiples of it
    override = config.typed(compose(["hparams_search=lr_optuna", "probe.every=100"]))
    assert override.probe.every == 100
