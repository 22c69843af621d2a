"""The bad-input campaign of issue 27, rerun as real commands.

Every bad input the tests hold (read from their own lists, so none is kept twice), and
the ones issue 27 names (``resume=DIR`` with non-ASCII, ``=`` or ``,`` in the path,
``steps`` below the checkpoint's step, a read-only directory, a full disk, SIGINT at
start-up and after the final commit), each run as ``python -m bnlab.train ...``, then
counted:

- ``one line``: the expected ending, no traceback (exit 2 and ``bnlab: error: ...``
  last; 130 and ``bnlab: interrupted``/``stopped`` for a signal; exit 0 for an input
  that must work, such as an odd path);
- ``traceback``: a ``Traceback`` anywhere in stderr, or an exit code bnlab never gives
  (1, a signal's negative code);
- ``silent``: exit 0 where an error was due (the input was accepted);
- ``other``: anything else (a clean error where the input should have worked).

    nice -n 19 uv run python benchmarks/bad_inputs.py [--jobs 2] [--only TEXT]

Takes a few minutes on 2 cores. Root only for the full disk (a tmpfs) and the
read-only cases (``setpriv`` drops root's override of file permissions); they are
skipped, and said to be, elsewhere.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

import test_data  # noqa: E402
import test_own_models  # noqa: E402
import test_records  # noqa: E402
import test_train  # noqa: E402
from trainer import QUICK  # noqa: E402

from bnlab.record.resume import hydra_quote  # noqa: E402

ROOT_USER = os.geteuid() == 0
Q = [*QUICK, "steps=100"]  # an input accepted by mistake trains for seconds, not 50,000 steps
NO_WRITE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@dataclass
class Case:
    source: str  # where it comes from (a test, or the issue)
    name: str
    args: list[str]  # bnlab.train's arguments (hydra.run.dir added unless given)
    expect: str = "error"  # error | ok | signal
    prepare: Callable[[Path], list[str]] | None = None  # makes files; returns more args
    signal_at: Callable[[subprocess.Popen, Path], None] | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. setpriv
    env: dict[str, str] = field(default_factory=dict)
    needs_root: bool = False
    own_dir: bool = False  # the case names its run directory itself


def marks(test: Callable) -> list:
    """The parameter list of a ``@pytest.mark.parametrize`` test."""
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return list(mark.args[1])


def cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnlab.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kw)  # fmt: skip


# ----------------------------------------------------------------- cases held by the tests


def from_tests() -> list[Case]:
    out = [Case("test_records.BAD", o, [*test_records.RUN, o]) for o, _ in test_records.BAD]
    out += [Case("test_train.OUT_OF_RANGE", " ".join(o), [*test_train.SHORT, *o])
            for o, _ in test_train.OUT_OF_RANGE]  # fmt: skip
    for t in (
        test_train.test_bad_override_fails_cleanly,
        test_train.test_bad_value_fails_in_one_line,
    ):
        out += [Case(f"test_train.{t.__name__}", o, [*Q, *o.split()]) for o, _ in marks(t)]
    out.append(Case("test_api.test_a_mistake_is_one_line", "no_such_key=1", [*Q, "no_such_key=1"]))

    def labels(d: Path) -> list[str]:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 64)
        y[5] = 10**6
        np.savez(d / "a.npz", x_train=rng.random((64, 8)).astype(np.float32), y_train=y,
                 x_test=rng.random((16, 8)).astype(np.float32), y_test=y[:16] % 3)  # fmt: skip
        return [f"data.path={d / 'a.npz'}"]

    out.append(Case("test_train.test_labels_beyond_the_examples_are_refused", "label 10^6",
                    [*test_train.SHORT, "data=arrays", "data.probe_size=16", "batch_size=16"],
                    prepare=labels))  # fmt: skip

    for kwargs, _ in marks(test_data.test_bad_config_gives_one_line):
        name = kwargs["name"]
        group = name if (ROOT / "configs" / "data" / f"{name}.yaml").exists() else "tfds"
        over = [f"data={group}"] + ([f"data.name={name}"] if group != name else [])
        over += [f"data.{k}={v}" for k, v in kwargs.items() if k != "name"]
        out.append(Case("test_data.test_bad_config_gives_one_line", " ".join(over),
                        [*Q, *over]))  # fmt: skip

    for changes, _ in marks(test_data.test_arrays_npz_mistakes_are_one_line):

        def npz(d: Path, changes=changes) -> list[str]:
            a = test_data.make_arrays() | changes
            np.savez(d / "bad.npz", **{k: v for k, v in a.items() if v is not None})
            return [f"data.path={d / 'bad.npz'}"]

        out.append(Case("test_data.test_arrays_npz_mistakes_are_one_line",
                        ",".join(changes), [*Q, "data=arrays", "data.probe_size=5"],
                        prepare=npz))  # fmt: skip

    def npz_file(kind: str) -> Callable[[Path], list[str]]:
        def make(d: Path) -> list[str]:
            p = d / {"absent": "absent.npz", "text": "text.npz", "one": "one.npy",
                     "objects": "objects.npz"}[kind]  # fmt: skip
            if kind == "text":
                p.write_text("x_train,y_train\n1,2\n")
            elif kind == "one":
                np.save(p, np.zeros(3))
            elif kind == "objects":
                np.savez(p, x_train=np.array([{}], dtype=object), y_train=[0], x_test=[0],
                         y_test=[0])  # fmt: skip
            return [f"data.path={p}"]

        return make

    for kind in ("absent", "text", "one", "objects"):
        out.append(Case("test_data.test_arrays_npz_file_mistakes_are_one_line", kind,
                        [*Q, "data=arrays", "data.probe_size=1"], prepare=npz_file(kind)))  # fmt: skip

    def folder(kind: str) -> Callable[[Path], list[str]]:
        def make(d: Path) -> list[str]:
            from PIL import Image

            root = d / "imgs"
            test_data.write_image_folder(
                root, {"train": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}}
            )
            if kind == "size":
                Image.new("RGB", (9, 9)).save(root / "test" / "b" / "big.png")
            elif kind == "channels":
                Image.new("L", (5, 6)).save(root / "train" / "b" / "grey.png")
            elif kind == "loose":
                Image.new("RGB", (5, 6)).save(root / "train" / "stray.png")
            elif kind == "notest":
                for f in (root / "test").rglob("*.png"):
                    f.unlink()
            elif kind == "missing":
                (root / "test").rename(root / "val")
            return [f"data.path={root}"]

        return make

    for kind in ("size", "channels", "loose", "notest", "missing"):
        out.append(Case("test_data.test_image_folder_mistakes_are_one_line", kind,
                        [*Q, "data=image_folder", "data.probe_size=1"], prepare=folder(kind)))  # fmt: skip

    for case, (magic, dims, payload, _) in sorted(test_data.BAD_HEADERS.items()):

        def idx(d: Path, magic=magic, dims=dims, payload=payload) -> list[str]:
            test_data.make_idx_dir(d / "src")
            test_data.write_raw_idx(d / "src" / "train-images-idx3-ubyte.gz", magic, dims, payload)
            return [f"data.dir={d / 'src'}", f"data.data_dir={d / 'tfds'}"]

        out.append(Case("test_data.BAD_HEADERS", case, [*Q, "data=fashion_mnist"],
                        prepare=idx))  # fmt: skip

    own = [*Q, *test_own_models.OWN]
    for over, _ in marks(test_own_models.test_model_errors_are_one_line):
        out.append(Case("test_own_models.test_model_errors_are_one_line", " ".join(over),
                        [*own, *over]))  # fmt: skip
    for target, _ in marks(
        test_own_models.test_a_model_output_that_is_not_the_logits_is_a_one_line_error
    ):
        out.append(
            Case("test_own_models.(model output)", target, [*own, f"model._target_={target}"])
        )
    out.append(Case("test_own_models.test_a_glob_matching_nothing_is_a_one_line_error", "nope*",
                    [*Q, "probe.sites=['layer1/*','nope*']"]))  # fmt: skip
    out.append(Case("test_loggers.test_a_logger_that_cannot_start_is_one_line", "mlflow at no server",
                    [*Q, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"],
                    env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}))  # fmt: skip
    return out


# ----------------------------------------------------------------- the issue's own list

BASE = [*QUICK, "steps=100", "chunk_steps=50", "probe.every=25", "eval_every=100",
        "checkpoint_every=100", "model.features=[16,16]"]  # fmt: skip


def made(name: str, steps: int = 100) -> Callable[[Path], list[str]]:
    """A finished record at ``d/name`` (steps ``steps``); the case resumes it."""

    def make(d: Path) -> list[str]:
        run = d / name
        res = cli([*BASE, f"steps={steps}", f"hydra.run.dir={hydra_quote(str(run))}"])
        if res.returncode:
            raise RuntimeError(f"could not make {run}: {res.stderr[-500:]}")
        return [f"resume={run}"]

    return make


def sigint_after(seconds: float) -> Callable[[subprocess.Popen, Path], None]:
    def send(proc: subprocess.Popen, d: Path) -> None:
        time.sleep(seconds)
        proc.send_signal(signal.SIGINT)

    return send


def sigint_when_finished(proc: subprocess.Popen, d: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((d / "run" / "summary.json").read_text())["status"] == "finished":
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)


def unfinished(d: Path) -> list[str]:
    """A run killed after its checkpoint at step 100 of 200 (as SIGKILL leaves it: the
    summary says running); the case continues it with fewer steps."""
    made("run", 200)(d)
    shutil.rmtree(d / "run" / "checkpoints" / "200")
    s = json.loads((d / "run" / "summary.json").read_text())
    (d / "run" / "summary.json").write_text(json.dumps({**s, "status": "running", "step": 100}))
    return [f"resume={d / 'run'}"]


def unfinished_by_dir(d: Path) -> list[str]:
    return [f"hydra.run.dir={unfinished(d)[0].removeprefix('resume=')}"]


def read_only_parent(d: Path) -> list[str]:
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return [f"hydra.run.dir={d / 'ro' / 'run'}"]


def read_only_record(d: Path) -> list[str]:
    (args,) = made("run")(d)
    for p in [d / "run", *(d / "run").rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    return [args, "steps=200"]


def full_disk(d: Path) -> list[str]:
    (d / "mnt").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(d / "mnt")], check=True)
    return [f"hydra.run.dir={d / 'mnt' / 'run'}"]


def issue() -> list[Case]:
    src = "issue 27"
    return [
        Case(src, "resume=DIR, non-ASCII path", ["steps=200"], "ok", made("räum"), own_dir=True),
        Case(src, "resume=DIR, '=' in the path", ["steps=200"], "ok", made("a=1"), own_dir=True),
        Case(src, "resume=DIR, ',' in the path", ["steps=200"], "ok", made("a,b"), own_dir=True),
        Case(
            src,
            "resume=DIR, all of them and a space",
            ["steps=200"],
            "ok",
            made("ä=1,b x"),
            own_dir=True,
        ),
        Case(
            src,
            "resume=DIR steps below the checkpoint's",
            ["steps=50"],
            "error",
            unfinished,
            own_dir=True,
        ),
        Case(
            src,
            "resume=DIR steps below a finished run's (says it is done)",
            ["steps=50"],
            "ok",
            made("run", 200),
            own_dir=True,
        ),
        Case(
            src,
            "hydra.run.dir steps below the checkpoint's",
            [*BASE, "steps=50"],
            "error",
            unfinished_by_dir,
            own_dir=True,
        ),
        Case(
            src,
            "a run directory in a read-only directory",
            BASE,
            "error",
            read_only_parent,
            prefix=NO_WRITE,
            needs_root=True,
            own_dir=True,
        ),
        Case(
            src,
            "resume a read-only record",
            [],
            "error",
            read_only_record,
            prefix=NO_WRITE,
            needs_root=True,
            own_dir=True,
        ),
        Case(
            src,
            "a full disk (200 kB)",
            [*BASE, "steps=2000"],
            "error",
            full_disk,
            needs_root=True,
            own_dir=True,
        ),
        *[
            Case(src, f"SIGINT {t} s after start", BASE, "signal", signal_at=sigint_after(t))
            for t in (0.05, 0.3, 1.0, 3.0)
        ],  # fmt: skip
        Case(
            src,
            "SIGINT after the final commit",
            [*BASE, "figure=true"],
            "signal",
            signal_at=sigint_when_finished,
        ),
    ]


# ----------------------------------------------------------------- running and counting


def run(case: Case, d: Path) -> tuple[str, str]:
    d.mkdir(parents=True)
    args = list(case.args) + (case.prepare(d) if case.prepare else [])
    if not case.own_dir:
        args.append(f"hydra.run.dir={d / 'run'}")
    env = {**os.environ, **case.env}
    try:
        proc = subprocess.Popen([*case.prefix, sys.executable, "-m", "bnlab.train", *args],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env)  # fmt: skip
        if case.signal_at:
            case.signal_at(proc, d)
        _, err = proc.communicate(timeout=600)
    finally:
        if (d / "mnt").is_dir():
            subprocess.run(["umount", str(d / "mnt")], capture_output=True)
    return classify(case, proc.returncode, err), err


def classify(case: Case, rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    last = lines[-1] if lines else ""
    if "Traceback" in err or rc not in (0, 2, 130):
        return "traceback"
    if case.expect == "ok":
        return "one line" if rc == 0 else "other"
    if case.expect == "signal":
        ends = ("bnlab: interrupted", "bnlab: stopped", "bnlab: finished")
        return "one line" if rc in (0, 130) and last.startswith(ends) else "other"
    if rc == 0:
        return "silent"
    return "one line" if rc == 2 and last.startswith("bnlab: error: ") else "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="run the cases whose source or name holds this")
    a = ap.parse_args()
    cases = [c for c in [*from_tests(), *issue()] if a.only in f"{c.source} {c.name}"]
    skipped = [c for c in cases if c.needs_root and not ROOT_USER]
    cases = [c for c in cases if c not in skipped]
    tmp = Path(tempfile.mkdtemp(prefix="bnlab-bad-inputs-"))
    t0 = time.monotonic()
    results: dict[int, tuple[str, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futs = {pool.submit(run, c, tmp / str(i)): i for i, c in enumerate(cases)}
        for f in concurrent.futures.as_completed(futs):
            i = futs[f]
            try:
                results[i] = f.result()
            except Exception as e:  # a case that could not be set up is counted apart
                results[i] = ("not run", f"{type(e).__name__}: {e}")
            c = cases[i]
            print(f"{results[i][0]:>10}  {c.source}: {c.name}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    total = Counter(r for r, _ in results.values())
    print(f"\n{len(cases)} cases in {time.monotonic() - t0:.0f} s"
          + (f" ({len(skipped)} skipped: not root)" if skipped else ""))  # fmt: skip
    for kind in ("one line", "traceback", "silent", "other", "not run"):
        print(f"  {kind:>10}: {total[kind]}")
    for i, (kind, err) in sorted(results.items()):
        if kind != "one line":
            tail = "\n      ".join(err.strip().splitlines()[-6:])
            print(f"\n{kind}: {cases[i].source}: {cases[i].name}\n      {tail}")


if __name__ == "__main__":
    main()
