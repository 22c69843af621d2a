"""Loggers (logger=[tensorboard,wandb,mlflow,csv]) read back through the real tools.

One short run writes every logger at once; TensorBoard is read back through a real
``tensorboard --logdir`` server on 127.0.0.1 (its HTTP data API), MLflow through its
client, W&B from its offline run file, CSV with pandas; each must hold what the
Parquet record holds.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from trainer import COMPILE_CACHE, QUICK, as_if_killed, tables, train

from bnlab.record import tables as record

BASE = [*QUICK, "steps=200", "chunk_steps=100", "eval_every=100", "logger.histogram_every=100"]
PROBE = 297  # data=digits' probe batch (its test split)
pytestmark = pytest.mark.xdist_group("loggers")


@pytest.fixture(scope="module", autouse=True)
def _compile_cache():
    jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run with every logger on, interrupted after its first checkpoint and resumed
    (so the loggers must not repeat the rows after it)."""
    root = tmp_path_factory.mktemp("loggers")
    run = root / "run"
    over = [*BASE, "logger=[tensorboard,csv,mlflow,wandb]", "checkpoint_every=100",
            f"logger.mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]  # fmt: skip
    train(over, run)
    as_if_killed(run, drop_checkpoint=200)  # as if killed after step 100
    train(over, run)
    return run


def scalar(run: Path, name: str) -> pd.DataFrame:
    s = tables(run)[record.SCALARS]
    return s[s["name"] == name].sort_values("step").reset_index(drop=True)


def test_csv_equals_the_record(run):
    for name, df in tables(run).items():
        got = pd.read_csv(run / "csv" / name.replace(".parquet", ".csv"))
        got = got.astype({c: df[c].dtype for c in df.columns if c in ("step", "unit", "value")})
        pd.testing.assert_frame_equal(
            got.sort_values(list(df.columns[:-1])).reset_index(drop=True),
            df.sort_values(list(df.columns[:-1])).reset_index(drop=True),
            check_dtype=False,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_tensorboard_serves_scalars_and_histograms(run):
    port = _free_port()
    exe = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(exe), "--logdir", str(run), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast=false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline:  # up, and done loading the run
            assert server.poll() is None, server.stderr.read()
            try:
                tags = _get(f"{base}/plugin/histograms/tags").get("tensorboard", {})
                if "hist/layer3/pre" in tags:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert "hist/layer3/pre" in tags, "tensorboard did not load the run within 90 s"

        def series(plugin: str, tag: str) -> list:
            q = urllib.parse.urlencode({"run": "tensorboard", "tag": tag})
            return _get(f"{base}/plugin/{plugin}/{plugin}?{q}")

        loss = scalar(run, "train_loss")
        got = series("scalars", "train_loss")
        assert [s for _, s, _ in got] == list(loss["step"])  # once each, despite the resume
        np.testing.assert_allclose([v for *_, v in got], loss["value"], rtol=1e-6)
        acts = tables(run)[record.ACTIVATIONS]
        p50 = acts.query("layer == 'layer3' and site == 'pre' and unit == -1 and stat == 'p50'")
        got = series("scalars", "acts/layer3/pre/p50")
        assert [s for _, s, _ in got] == list(p50.sort_values("step")["step"])
        np.testing.assert_allclose([v for *_, v in got], p50.sort_values("step")["value"],
                                   rtol=1e-6)  # fmt: skip
        hist = series("histograms", "hist/layer3/pre")
        assert [s for _, s, _ in hist] == [0, 100, 200]
        for _, _, buckets in hist:  # every value of the site on the probe batch
            assert sum(c for *_, c in buckets) == pytest.approx(PROBE * 100)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def test_mlflow_client_reads_the_runs(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run.parent}/mlflow.db")
    exp = client.get_experiment_by_name("bnlab")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2  # the first process and the resumed one
    assert all(r.data.tags["bnlab.run_dir"] == str(run.resolve()) for r in runs)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    last = runs[1]
    assert last.data.params["optimizer.lr"] == "0.5" and last.data.params["data.name"] == "digits"
    assert last.data.tags["bnlab.status"] == "finished"
    hist = [(m.step, m.value) for m in client.get_metric_history(last.info.run_id, "test_accuracy")]
    acc = scalar(run, "test_accuracy")
    assert [s for s, _ in hist] == [200]  # the resumed process logs after its checkpoint
    assert hist[0][1] == pytest.approx(acc["value"].iloc[-1])


def read_wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-*.wandb``): a 7-byte header, then
    LevelDB-log chunks (checksum, length, type) in 32 KiB blocks; each record a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        buf += data[pos : pos + n]
        pos += n
        if kind in (1, 4):  # a full record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


def test_wandb_offline_run_holds_config_rows_and_histograms(run):
    files = sorted(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2  # offline (no API key here): one per process
    recs = read_wandb_records(Path(files[-1]))
    kinds = [r.WhichOneof("record_type") for r in recs]
    (r_run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    conf = {u.key: json.loads(u.value_json) for u in r_run.config.update}
    assert conf["optimizer"]["lr"] == 0.5 and conf["data"]["name"] == "digits"
    rows = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]  # fmt: skip
    loss = {row["step"]: row["train_loss"] for row in rows if "train_loss" in row}
    want = scalar(run, "train_loss")
    want = want[want["step"] > 100]
    assert sorted(loss) == list(want["step"])
    np.testing.assert_allclose([loss[s] for s in sorted(loss)], want["value"], rtol=1e-6)
    hists = {row["step"]: row for row in rows if "hist/layer3/pre.values" in row}
    assert sorted(hists) == [200]  # (step 0 and 100: the first process's file)
    assert sum(hists[200]["hist/layer3/pre.values"]) == PROBE * 100
    assert kinds[-1] == "exit" and recs[-1].exit.exit_code == 0


def test_wandb_groups_a_sweeps_members(tmp_path):
    over = [*QUICK, "steps=100", "chunk_steps=100", "eval_every=100", "sweep.lr=[0.05,0.5]",
            "logger=wandb", "logger.histogram_every=0"]  # fmt: skip
    train(over, tmp_path)
    groups, names = set(), []
    for i in range(2):
        (f,) = glob.glob(str(tmp_path / str(i) / "wandb" / "offline-run-*" / "run-*.wandb"))
        (r,) = [r.run for r in read_wandb_records(Path(f)) if r.WhichOneof("record_type") == "run"]
        groups.add(r.run_group)
        names.append(r.display_name)
        conf = {u.key: json.loads(u.value_json) for u in r.config.update}
        assert conf["optimizer"]["lr"] == [0.05, 0.5][i] and conf["sweep"]["lr"] == []
    # named by their overrides (the lr each member trains with), as TensorBoard and MLflow
    assert groups == {str(tmp_path.resolve())} and names == ["lr=0.05", "lr=0.5"]


def test_a_logger_that_cannot_start_is_one_line(tmp_path):
    """An MLflow server that is not there (a free port on 127.0.0.1): one line, exit 2."""
    from trainer import cli

    port = _free_port()
    res = cli([*BASE, "logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}",
               f"hydra.run.dir={tmp_path}"], timeout=300,
              env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("bnlab: error: logger=mlflow could not start: ")
    )


def test_tensorboard_compares_a_sweep_by_its_overrides(tmp_path):
    """A vectorized sweep's members in TensorBoard (its real server's HTTP API): runs
    named by their overrides, the overrides and final metrics as hparams, and each
    site's percentiles as one multi-line chart."""
    over = [*QUICK, "steps=100", "chunk_steps=100", "eval_every=100", "sweep.lr=[0.05,0.5]",
            "logger=tensorboard", "logger.histogram_every=0", "norm=bn"]  # fmt: skip
    train(over, tmp_path / "s", ["norm=bn", "sweep.lr=[0.05,0.5]"])
    port = _free_port()
    exe = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(exe), "--logdir", str(tmp_path / "s"), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast=false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline, runs = time.monotonic() + 90, []
        while time.monotonic() < deadline and len(runs) < 2:
            assert server.poll() is None, server.stderr.read()
            try:
                runs = _get(f"{base}/runs")
            except OSError:
                pass
            time.sleep(1)
        assert runs == ["0/tensorboard/norm=bn,lr=0.05", "1/tensorboard/norm=bn,lr=0.5"]
        req = urllib.request.Request(
            f"{base}/plugin/hparams/experiment", data=b'{"experimentName": ""}',
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        deadline, exp = time.monotonic() + 60, {}
        while time.monotonic() < deadline and not exp.get("metricInfos"):
            with urllib.request.urlopen(req, timeout=10) as r:
                exp = json.loads(r.read())
            time.sleep(1)
        assert {h["name"] for h in exp["hparamInfos"]} == {"norm", "optimizer.lr"}
        assert "test_accuracy" in {m["name"]["tag"] for m in exp["metricInfos"]}
        layout = _get(f"{base}/plugin/custom_scalars/layout")
        charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
        assert charts["acts/layer3/pre"] == [f"acts/layer3/pre/p{q}" for q in (15, 50, 85)]
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
