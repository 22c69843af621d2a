"""The README's TensorBoard figure: two real runs' drift histograms, screenshotted.

    uv run python docs/make_tensorboard_figure.py [--runs DIR] [--steps 10000]

Trains the Fig. 1 network on Fashion-MNIST with ``norm=none`` and ``norm=bn``
(``logger=tensorboard logger.histogram_every=1000``) into ``DIR/none`` and ``DIR/bn``
(kept if already finished), serves ``DIR`` with a real ``tensorboard`` on 127.0.0.1 (a
free port), and takes a screenshot of its histogram dashboard for ``hist/layer3/pre``
with headless Chromium (Debian: ``apt-get install chromium``) into
``docs/tensorboard_histograms.png``. The server stops at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "tensorboard_histograms.png"
TAG = "hist/layer3/pre"


def train(run: Path, norm: str, steps: int) -> None:
    summary = run / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["status"] == "finished":
        return
    subprocess.run([sys.executable, "-m", "bnlab.train", f"norm={norm}", f"steps={steps}",
                    "logger=tensorboard", "logger.histogram_every=1000", "progress=false",
                    "figure=false", f"hydra.run.dir={run}"], cwd=ROOT, check=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="outputs/tensorboard_figure")
    ap.add_argument("--steps", type=int, default=10_000)
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    for norm in ("none", "bn"):
        train(runs / norm, norm, args.steps)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs headless Chromium: apt-get install chromium")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tb = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(tb), "--logdir", str(runs), "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast=false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/data/plugin/histograms/tags", timeout=5) as r:
                    tags = json.loads(r.read())
                if all(TAG in tags.get(f"{n}/tensorboard", {}) for n in ("none", "bn")):
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            sys.exit("tensorboard did not load both runs within 120 s")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--window-size=1200,430",
                 "--virtual-time-budget=20000", f"--screenshot={OUT}",
                 f"{url}/?darkMode=false#histograms&tagFilter=layer3%2Fpre%24"],
                check=True, timeout=180, capture_output=True,
            )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(OUT)


if __name__ == "__main__":
    main()
