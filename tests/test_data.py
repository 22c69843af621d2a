"""Tests for bnlab.data: IDX builder round trip, sources, fail-fast offline, preprocessing.

No test touches the network: an autouse fixture refuses every non-loopback connection,
and the download path is exercised against a local HTTP server.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import importlib.util
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bnlab import data
from bnlab.data import DataError, idx_source, network

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}

needs_no_tensorflow = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="TensorFlow is installed; these check the messages shown without it",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse DNS lookups and connections to anything but loopback."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            raise OSError(f"network disabled in tests ({address[0]})")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


# --------------------------------------------------------------------------- IDX fixtures


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_idx_dir(path: Path, seed: int = 0, n_train: int = 40, n_test: int = 12) -> dict:
    """Tiny Fashion-MNIST-shaped IDX files in `path`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    write_idx(path / "train-images-idx3-ubyte.gz", arrays["train_x"])
    write_idx(path / "train-labels-idx1-ubyte.gz", arrays["train_y"])
    write_idx(path / "t10k-images-idx3-ubyte.gz", arrays["test_x"])
    write_idx(path / "t10k-labels-idx1-ubyte.gz", arrays["test_y"])
    return arrays


@pytest.fixture
def no_local_dirs(monkeypatch, tmp_path):
    """Pretend the standard system locations (Debian package) hold nothing."""
    for name, spec in list(data.IDX_DATASETS.items()):
        empty = (str(tmp_path / "nowhere" / name),)
        monkeypatch.setitem(data.IDX_DATASETS, name, dataclasses.replace(spec, local_dirs=empty))


def assert_same_as_written(ds: data.Dataset, written: dict) -> None:
    """Images and labels come back exactly and in IDX-file order (scale=False)."""
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(x, written[f"{split}_x"][..., None].astype(np.float32))
        np.testing.assert_array_equal(y, written[f"{split}_y"])


# --------------------------------------------------------------------------- IDX reader


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "plain").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "plain"), a)

    (tmp_path / "bad").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "plain").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "short")


def write_raw_idx(path: Path, magic: bytes, dims: tuple[int, ...], payload: bytes) -> None:
    """Write a gzipped file with any 4-byte magic number, dims and payload."""
    with gzip.open(path, "wb") as f:
        f.write(magic + struct.pack(f">{len(dims)}I", *dims) + payload)


# A wrong 4-byte header in train-images, and what the one-line message must say.
BAD_HEADERS = {
    "zip file": (b"PK\x03\x04", (40, 28, 28), bytes(40 * 784), "bad magic number 504b0304"),
    "unknown type": (b"\x00\x00\x07\x03", (40, 28, 28), bytes(40 * 784), "bad magic number"),
    "255 dimensions": (b"\x00\x00\x08\xff", (40, 28, 28), bytes(40 * 784), "255 dimensions"),
    "0 dimensions": (b"\x00\x00\x08\x00", (), bytes(16), "0 dimensions"),
    "int32 pixels": (b"\x00\x00\x0c\x03", (40, 28, 28), bytes(4 * 40 * 784), "int32 images"),
    "3 channels": (b"\x00\x00\x08\x04", (40, 28, 28, 3), bytes(3 * 40 * 784), "28x28x1"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_idx_header_is_one_line(tmp_path, monkeypatch, no_local_dirs, case):
    magic, dims, payload, says = BAD_HEADERS[case]
    src = tmp_path / "src"
    make_idx_dir(src)
    write_raw_idx(src / "train-images-idx3-ubyte.gz", magic, dims, payload)

    # from data.dir, and from a standard local folder (the Debian package's place)
    spec = dataclasses.replace(data.IDX_DATASETS["fashion_mnist"], local_dirs=(str(src),))
    monkeypatch.setitem(data.IDX_DATASETS, "fashion_mnist", spec)
    for kwargs in ({"dir": str(src)}, {"download": False}):
        with pytest.raises(DataError, match=says) as e:
            data.load("fashion_mnist", data_dir=str(tmp_path / "tfds"), **kwargs)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 300, msg
        assert "train-images-idx3-ubyte.gz" in msg
        assert ("re-download it" in msg) or ("check which dataset data.dir points at" in msg)


def test_bad_idx_header_inside_the_tfds_builder_is_one_line(tmp_path):
    """The builder (what `tfds build` or a download runs) reads the files inside TFDS."""
    from bnlab.data import idx_builder

    src = tmp_path / "src"
    make_idx_dir(src)
    write_raw_idx(src / "t10k-labels-idx1-ubyte.gz", b"\x00\x00\x08\xff", (12,), bytes(12))
    with pytest.raises(DataError, match="255 dimensions") as e:
        idx_builder.prepare_and_read("fashion_mnist", tmp_path / "tfds", src)
    assert "\n" not in str(e.value) and "re-download it" in str(e.value)


def test_float_labels_are_rejected(tmp_path):
    src = tmp_path / "src"
    make_idx_dir(src)
    labels = np.zeros(40, ">f4").tobytes()
    write_raw_idx(src / "train-labels-idx1-ubyte.gz", b"\x00\x00\x0d\x01", (40,), labels)
    with pytest.raises(DataError, match="float32 labels, not integers") as e:
        data.load("fashion_mnist", dir=str(src), data_dir=str(tmp_path / "tfds"))
    assert "\n" not in str(e.value)


def test_find_idx_files_accepts_unzipped_and_dotted_names(tmp_path):
    for name in ("train-images.idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / name).write_bytes(b"")
    found = data.find_idx_files(tmp_path)
    assert set(found) == {"train_images", "train_labels", "test_images"}
    assert found["train_images"].name == "train-images.idx3-ubyte"


# --------------------------------------------------------------------------- IDX builder


def test_idx_builder_roundtrip_from_dir(tmp_path):
    written = make_idx_dir(tmp_path / "src")
    data_dir = tmp_path / "tfds"
    ds = data.load(
        "fashion_mnist",
        dir=str(tmp_path / "src"),
        data_dir=str(data_dir),
        scale=False,
        probe_size=12,
    )
    assert "prepared from" in ds.source and str(tmp_path / "src") in ds.source
    assert_same_as_written(ds, written)
    assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
    assert ds.class_names[0] == "T-shirt/top"

    # The TFDS records themselves hold the same examples (as a set, before reordering).
    from bnlab.data import idx_builder

    builder = idx_builder.IdxImages(
        config="fashion_mnist", data_dir=str(data_dir), file_format="array_record"
    )
    assert idx_builder.IdxImages.name == data.BUILDER_NAME
    records = builder.as_data_source(split="train")
    got = {
        (r["image"].tobytes(), int(r["label"])) for r in (records[i] for i in range(len(records)))
    }
    want = {
        (x[..., None].tobytes(), int(y))
        for x, y in zip(written["train_x"], written["train_y"], strict=True)
    }
    assert got == want

    again = data.load(
        "fashion_mnist",
        dir=str(tmp_path / "src"),
        data_dir=str(data_dir),
        scale=False,
        probe_size=12,
    )
    assert "cache of" in again.source
    assert_same_as_written(again, written)

    # Changed files in data.dir are noticed and re-prepared.
    rewritten = make_idx_dir(tmp_path / "src", seed=1, n_train=30)
    fresh = data.load(
        "fashion_mnist",
        dir=str(tmp_path / "src"),
        data_dir=str(data_dir),
        scale=False,
        probe_size=12,
    )
    assert "prepared from" in fresh.source
    assert_same_as_written(fresh, rewritten)


def test_prepared_tfds_data_is_used_without_the_npz(tmp_path, no_local_dirs):
    written = make_idx_dir(tmp_path / "src")
    data_dir = tmp_path / "tfds"
    data.load("mnist", dir=str(tmp_path / "src"), data_dir=str(data_dir), probe_size=12)
    cache = data_dir / data.BUILDER_NAME / "mnist" / data.BUILDER_VERSION / data.CACHE_FILE
    cache.unlink()
    ds = data.load("mnist", data_dir=str(data_dir), download=False, scale=False, probe_size=12)
    assert "existing TFDS records" in ds.source
    assert_same_as_written(ds, written)
    assert cache.is_file()  # and the fast cache is back


def test_import_is_cheap_and_a_cached_load_never_imports_tfds(tmp_path):
    make_idx_dir(tmp_path / "src")
    data.load("mnist", dir=str(tmp_path / "src"), data_dir=str(tmp_path / "tfds"), probe_size=12)
    code = (
        "import sys\n"
        "from bnlab import data\n"
        "heavy = ('tensorflow_datasets', 'tensorflow', 'PIL', 'sklearn', 'jax')\n"
        "print('import:', [m for m in heavy if m in sys.modules])\n"
        f"ds = data.load('mnist', data_dir={str(tmp_path / 'tfds')!r}, download=False, probe_size=12)\n"
        "print('cached:', 'cache of' in ds.source, [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "import: []" in out.stdout and "cached: True []" in out.stdout, out.stdout


def test_dir_without_files_says_what_is_missing(tmp_path):
    make_idx_dir(tmp_path / "src")
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz") as e:
        data.load("fashion_mnist", dir=str(tmp_path / "src"), data_dir=str(tmp_path / "tfds"))
    assert "\n" not in str(e.value)


def test_missing_dir_is_named(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        data.load("mnist", dir=str(tmp_path / "absent"), data_dir=str(tmp_path / "tfds"))


def test_wrong_images_in_dir_are_rejected(tmp_path):
    src = tmp_path / "src"
    make_idx_dir(src)
    write_idx(src / "train-images-idx3-ubyte.gz", np.zeros((40, 8, 8), np.uint8))
    with pytest.raises(DataError, match="expects uint8 28x28"):
        data.load("fashion_mnist", dir=str(src), data_dir=str(tmp_path / "tfds"))


# --------------------------------------------------------------------------- download path


@pytest.fixture
def idx_server(tmp_path):
    """Serve tiny IDX files over HTTP on loopback; yields (base_url, written, checksums)."""
    www = tmp_path / "www"
    written = make_idx_dir(www, seed=3)
    checksums = {}
    for key, stem in data.IDX_FILES.items():
        blob = (www / f"{stem}.gz").read_bytes()
        checksums[key] = (len(blob), hashlib.sha256(blob).hexdigest())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", written, checksums
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_download_path_checks_checksums(tmp_path, monkeypatch, no_local_dirs, no_proxy, idx_server):
    url, written, checksums = idx_server
    spec = dataclasses.replace(data.IDX_DATASETS["mnist"], url=url, checksums=checksums)
    monkeypatch.setitem(data.IDX_DATASETS, "mnist", spec)
    ds = data.load("mnist", data_dir=str(tmp_path / "tfds"), scale=False, probe_size=12)
    assert f"prepared from a download of {url}" in ds.source
    assert_same_as_written(ds, written)

    bad = dict(checksums, train_labels=(checksums["train_labels"][0], "0" * 64))
    monkeypatch.setitem(data.IDX_DATASETS, "mnist", dataclasses.replace(spec, checksums=bad))
    with pytest.raises(DataError, match="downloading MNIST .* failed") as e:
        data.load("mnist", data_dir=str(tmp_path / "other"))
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- offline: fail fast


def test_offline_fails_fast_with_one_line(tmp_path, monkeypatch, no_local_dirs, no_proxy):
    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        data.load("fashion_mnist", data_dir=str(tmp_path / "tfds"))
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        "Fashion-MNIST not found locally",
        str(tmp_path / "tfds"),
        str(tmp_path / "nowhere" / "fashion_mnist"),
        "cannot download",
        "fashion-mnist.s3-website.eu-central-1.amazonaws.com:80",
        "apt-get install dataset-fashion-mnist",
        "data.dir=",
        "data=digits",
    ):
        assert part in msg, part


def test_hanging_connection_is_cut_short(tmp_path, monkeypatch, no_local_dirs, no_proxy):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(60)
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(network, "CONNECT_TIMEOUT_S", 0.5)  # 3 s by default; keep the test quick
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match="cannot download .* within 0.5 s"):
            data.load("mnist", data_dir=str(tmp_path / "tfds"))
        assert time.monotonic() - start < 2
    finally:
        release.set()


def test_download_false_never_connects(tmp_path, monkeypatch, no_local_dirs):
    def boom(*args, **kwargs):
        raise AssertionError("must not connect when download=False")

    monkeypatch.setattr(socket, "create_connection", boom)
    with pytest.raises(DataError, match="data.download=false") as e:
        data.load("mnist", data_dir=str(tmp_path / "tfds"), download=False)
    assert "data=digits" in str(e.value) and "apt-get" not in str(e.value)


# --------------------------------------------------------------------------- real Fashion-MNIST

_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    len(data.find_idx_files(_DEBIAN)) < 4,
    reason=f"Debian package dataset-fashion-mnist not installed ({_DEBIAN} lacks the IDX files);"
    " run .ci/install-debian.sh",
)
def test_fashion_mnist_from_debian_then_cache(tmp_path, monkeypatch):
    ds = data.load("fashion_mnist", data_dir=str(tmp_path))
    assert str(_DEBIAN) in ds.source and "prepared from" in ds.source
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert ds.train_x.dtype == np.float32 and 0.0 <= ds.train_x.min() < ds.train_x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(ds.train_y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_y), np.full(10, 1000))
    assert ds.probe_x.shape == (1000, 28, 28, 1)

    # the second load reads the cache, never the IDX files again (was a timed assertion,
    # < 5 s, which a busy machine failed)
    def no_idx(*args, **kwargs):
        raise AssertionError("the IDX files were prepared again instead of read from the cache")

    monkeypatch.setattr(idx_source, "_prepare_idx", no_idx)
    again = data.load("fashion_mnist", data_dir=str(tmp_path))
    assert "cache of" in again.source and str(_DEBIAN) in again.source
    np.testing.assert_array_equal(again.train_x, ds.train_x)
    np.testing.assert_array_equal(again.test_y, ds.test_y)


# --------------------------------------------------------------------------- digits, preprocessing


def test_digits_loads_offline(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network"))
    ds = data.load("digits", probe_size=297)
    assert ds.train_x.shape == (1500, 8, 8, 1) and ds.test_x.shape == (297, 8, 8, 1)
    assert ds.num_classes == 10 and ds.source.startswith("sklearn")
    assert 0.0 == ds.train_x.min() and ds.train_x.max() == 1.0
    assert ds.probe_x.shape == (297, 8, 8, 1)  # the whole split, in order
    np.testing.assert_array_equal(ds.probe_y, ds.test_y)


def test_flatten_and_standardize():
    ds = data.load("digits", standardize="per_pixel", flatten=True, probe_split="train")
    assert ds.train_x.shape == (1500, 64) and ds.probe_x.shape == (1000, 64)
    assert ds.image_shape == (8, 8, 1) and ds.mean.shape == (8, 8, 1)
    np.testing.assert_allclose(ds.train_x.mean(0), 0.0, atol=1e-5)
    varying = ds.std.reshape(-1) != 1.0
    np.testing.assert_allclose(ds.train_x.std(0)[varying], 1.0, atol=1e-4)
    assert np.isfinite(ds.test_x).all()
    assert "per-pixel" in ds.normalization

    raw = data.load("digits", scale=False, probe_size=1)
    assert raw.train_x.max() == 16.0 and raw.probe_x.shape == (1, 8, 8, 1)


def test_probe_batch_is_fixed_seeded_and_kept_in_split():
    a = data.load("digits", probe_size=50, probe_seed=7)
    b = data.load("digits", probe_size=50, probe_seed=7)
    c = data.load("digits", probe_size=50, probe_seed=8)
    np.testing.assert_array_equal(a.probe_x, b.probe_x)
    assert not np.array_equal(a.probe_x, c.probe_x)
    idx = np.sort(np.random.default_rng(7).choice(len(a.test_y), size=50, replace=False))
    np.testing.assert_array_equal(a.probe_x, a.test_x[idx])
    np.testing.assert_array_equal(a.probe_y, a.test_y[idx])
    assert len(a.test_y) == 297  # not removed from the split


def test_validation_split_is_held_out_by_seed():
    base = data.load("digits", scale=False, probe_size=10)
    assert base.val_x.shape == (0, 8, 8, 1) and base.val_x.dtype == np.float32
    assert base.val_y.shape == (0,) and base.val_y.dtype == np.int32

    ds = data.load("digits", scale=False, validation=200, validation_seed=3, probe_size=10)
    held = np.sort(np.random.default_rng(3).choice(1500, size=200, replace=False))
    rest = np.setdiff1d(np.arange(1500), held)
    np.testing.assert_array_equal(ds.val_x, base.train_x[held])
    np.testing.assert_array_equal(ds.val_y, base.train_y[held])
    np.testing.assert_array_equal(ds.train_x, base.train_x[rest])  # removed, order kept
    np.testing.assert_array_equal(ds.train_y, base.train_y[rest])
    np.testing.assert_array_equal(ds.test_x, base.test_x)

    same = data.load("digits", scale=False, validation=200, validation_seed=3, probe_size=9)
    np.testing.assert_array_equal(same.val_y, ds.val_y)  # the split ignores the probe
    other = data.load("digits", scale=False, validation=200, validation_seed=4, probe_size=9)
    assert not np.array_equal(other.val_x, ds.val_x)


def test_validation_is_preprocessed_with_train_statistics_only():
    base = data.load("digits", probe_size=10)
    ds = data.load(
        "digits", validation=300, standardize="per_pixel", flatten=True, probe_split="train"
    )
    held = np.sort(np.random.default_rng(0).choice(1500, size=300, replace=False))
    rest = np.setdiff1d(np.arange(1500), held)
    np.testing.assert_allclose(ds.mean, base.train_x[rest].mean(0), atol=1e-6)
    assert not np.allclose(ds.mean, base.train_x.mean(0), atol=1e-6)
    np.testing.assert_allclose(ds.train_x.mean(0), 0.0, atol=1e-5)
    assert ds.val_x.shape == (300, 64) and ds.probe_x.shape == (1000, 64)
    want = ((base.train_x[held] - ds.mean) / ds.std).reshape(300, -1)
    np.testing.assert_allclose(ds.val_x, want, rtol=1e-5, atol=1e-5)


def test_probe_from_the_validation_split():
    ds = data.load("digits", validation=100, probe_split="validation", probe_size=40)
    idx = np.sort(np.random.default_rng(0).choice(100, size=40, replace=False))
    np.testing.assert_array_equal(ds.probe_x, ds.val_x[idx])
    np.testing.assert_array_equal(ds.probe_y, ds.val_y[idx])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "digits", "standardize": "zca"}, "data.standardize='zca'"),
        ({"name": "digits", "probe_split": "val"}, "data.probe_split='val'.*use train, valid"),
        (
            {"name": "digits", "validation": 1500},
            "data.validation=1500 leaves no training examples .the training set has 1500.: "
            "use data.validation=1499 or less",
        ),
        ({"name": "digits", "validation": -1}, "data.validation=-1 is negative: use 0"),
        ({"name": "digits", "validation_seed": -2}, "data.validation_seed=-2 is negative"),
        ({"name": "digits", "probe_seed": -1}, "data.probe_seed=-1 is negative"),
        (
            {"name": "digits", "probe_split": "validation"},
            "data.probe_split=validation needs a validation split: set data.validation",
        ),
        (
            {"name": "digits", "validation": 50, "probe_split": "validation", "probe_size": 51},
            "data.probe_size=51 exceeds the 50 examples of the validation split",
        ),
        ({"name": "digits", "probe_size": -1}, "data.probe_size=-1 is below 1: use 1 or more"),
        ({"name": "digits", "probe_size": 0}, "data.probe_size=0 is below 1: use 1 or more"),
        (
            {"name": "digits", "probe_size": 298},
            "data.probe_size=298 exceeds the 297 examples of the test split: "
            "use data.probe_size=297 or less",
        ),
        (
            {"name": "digits", "probe_size": 1501, "probe_split": "train"},
            "data.probe_size=1501 exceeds the 1500 examples of the train split",
        ),
        ({"name": "no_such_dataset"}, "unknown dataset 'no_such_dataset'"),
        ({"name": "cifar10", "dir": "/tmp"}, "data.dir is for IDX datasets"),
        ({"name": "arrays"}, "data=arrays needs data.path=FILE.npz"),
        ({"name": "image_folder"}, "data=image_folder needs data.path=DIR"),
        (
            {"name": "mnist", "path": "/tmp/x.npz"},
            "data.path is for data=arrays .FILE.npz. and data=image_folder .DIR., not",
        ),
    ],
)
def test_bad_config_gives_one_line(kwargs, match):
    from bnlab.errors import UserError

    with pytest.raises(DataError, match=match) as e:
        data.load(**kwargs)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, UserError)  # the entry point reports it in one line, exit 2


@needs_no_tensorflow
def test_stock_tfds_without_tensorflow_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=f"cifar10 is not prepared in {tmp_path}") as e:
        data.load("cifar10", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "tfds-full" in msg
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in msg


# --------------------------------------------------------------------------- data=arrays


def make_arrays(shape=(6, 5, 3), dtype=np.uint8, n_train=30, n_test=10, classes=5, seed=0):
    """Four arrays in the layout data=arrays reads (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)

    def x(n):
        if dtype == np.uint8:
            return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return rng.normal(size=(n, *shape)).astype(dtype)

    return {
        "x_train": x(n_train),
        "y_train": rng.integers(0, classes, n_train),
        "x_test": x(n_test),
        "y_test": rng.integers(0, classes, n_test),
    }


def test_arrays_npz_images_roundtrip(tmp_path):
    a = make_arrays()
    a["y_train"][0] = 4  # the largest label decides K
    np.savez(tmp_path / "mine.npz", **a)
    ds = data.load("arrays", path=str(tmp_path / "mine.npz"), scale=False, probe_size=10)
    np.testing.assert_array_equal(ds.train_x, a["x_train"].astype(np.float32))
    np.testing.assert_array_equal(ds.test_y, a["y_test"])
    assert ds.train_y.dtype == np.int32 and ds.train_x.dtype == np.float32
    assert ds.image_shape == (6, 5, 3) and ds.num_classes == 5
    assert ds.class_names == ("0", "1", "2", "3", "4")
    assert str(tmp_path / "mine.npz") in ds.source
    scaled = data.load("arrays", path=str(tmp_path / "mine.npz"), probe_size=10)
    np.testing.assert_allclose(scaled.train_x, a["x_train"] / 255.0, rtol=1e-6)
    assert "x/255" in scaled.normalization


def test_arrays_npz_grey_images_class_names_and_validation(tmp_path):
    a = make_arrays(shape=(7, 7), classes=3)
    np.savez(tmp_path / "g.npz", class_names=np.array(["cat", "dog", "eel", "fox"]), **a)
    ds = data.load("arrays", path=str(tmp_path / "g.npz"), validation=5, probe_size=4)
    assert ds.train_x.shape == (25, 7, 7, 1) and ds.val_x.shape == (5, 7, 7, 1)
    assert ds.num_classes == 4 and ds.class_names == ("cat", "dog", "eel", "fox")


def test_arrays_npz_float_vectors_are_taken_as_they_are(tmp_path):
    a = make_arrays(shape=(12,), dtype=np.float64, classes=7)
    np.savez(tmp_path / "v.npz", **a)
    ds = data.load("arrays", path=str(tmp_path / "v.npz"), probe_size=10)  # scale=True
    assert ds.train_x.shape == (30, 12) and ds.probe_x.shape == (10, 12)
    assert ds.image_shape == (1, 1, 12) and ds.num_classes == a["y_train"].max() + 1
    np.testing.assert_allclose(ds.train_x, a["x_train"], rtol=1e-6)  # floats: not divided
    std = data.load("arrays", path=str(tmp_path / "v.npz"), standardize="per_pixel", probe_size=1)
    np.testing.assert_allclose(std.train_x.mean(0), 0.0, atol=1e-5)


@pytest.mark.parametrize("columns", [None, 3])
def test_arrays_npz_float_targets_are_a_task_without_classes(tmp_path, columns):
    """Float targets (N,) or (N, K) stay float32 as they are: K outputs, no classes."""
    a = make_arrays(shape=(12,), dtype=np.float64)
    for split in ("train", "test"):
        n = len(a[f"x_{split}"])
        a[f"y_{split}"] = np.linspace(-1, 1, n * (columns or 1)).reshape(n, -1).squeeze()
    np.savez(tmp_path / "r.npz", **a)
    ds = data.load("arrays", path=str(tmp_path / "r.npz"), probe_size=10, validation=5)
    assert ds.train_y.dtype == np.float32 and not ds.classes and ds.num_classes == (columns or 1)
    assert ds.train_y.shape[1:] == ((columns,) if columns else ())
    np.testing.assert_allclose(ds.test_y, a["y_test"], rtol=1e-6)
    assert data.load("arrays", path=str(tmp_path / "r.npz"), probe_size=1).train_y.shape[0] == 30
    assert ds.probe_y.shape == (10, *ds.train_y.shape[1:])


def _npz_with(tmp_path, **changes):
    a = make_arrays()
    a.update(changes)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in a.items() if v is not None})
    return str(path)


@pytest.mark.parametrize(
    "changes, says",
    [
        (
            {"y_test": None},
            "lacks y_test .it has x_train, y_train, x_test.: save them with np.savez",
        ),
        ({"x_train": np.zeros(30, np.uint8)}, "x_train has shape .30,., not images"),
        ({"x_train": np.zeros((30, 6, 5, 3), np.int64)}, "x_train holds int64 pixels: store uint8"),
        ({"y_train": np.zeros(30, np.float32)}, "y_train is float32 but y_test is int64: store"),
        (
            {"y_train": np.zeros((30, 2)), "y_test": np.zeros((10, 3))},
            "y_train targets have shape .2,. but y_test .3,.: both splits",
        ),  # fmt: skip
        ({"y_test": np.full(10, np.nan)}, "y_test holds NaN or infinite targets"),
        ({"y_test": np.zeros((10, 2, 2))}, "y_test has shape .10, 2, 2. for the 10 examples"),
        ({"y_test": -np.ones(10, int)}, "y_test has negative labels .min -1.: labels are class"),
        ({"y_train": np.zeros(29, int)}, "y_train has shape .29,. for the 30 examples"),
        ({"x_test": np.zeros((10, 5, 6, 3), np.uint8)}, "x_test examples have shape .5, 6, 3."),
        ({"x_test": np.zeros((10, 6, 5, 3), np.float32)}, "x_train is uint8 but x_test is float32"),
        ({"x_test": np.full((10, 6, 5, 3), np.nan)}, "x_test holds NaN or infinite values"),
        ({"x_test": np.zeros((0, 6, 5, 3), np.uint8)}, "x_test is empty: each split needs"),
        ({"class_names": np.array(["a", "b"])}, "2 class names for labels up to 4: give one name"),
        ({"class_names": np.arange(5)}, "class_names is int64 of shape .5,.: store one string"),
    ],
)
def test_arrays_npz_mistakes_are_one_line(tmp_path, changes, says):
    path = _npz_with(tmp_path, **changes)
    with pytest.raises(DataError, match=says) as e:
        data.load("arrays", path=path, probe_size=5)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"data.path={path}")


def test_arrays_npz_file_mistakes_are_one_line(tmp_path):
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    np.save(tmp_path / "one.npy", np.zeros(3))
    np.savez(tmp_path / "objects.npz", x_train=np.array([{}], dtype=object), y_train=[0],
             x_test=[0], y_test=[0])  # fmt: skip
    cases = {
        str(tmp_path / "absent.npz"): "is not a file: point it at an .npz",
        str(tmp_path / "text.npz"): "is not a readable .npz .* save them with np.savez",
        str(tmp_path / "one.npy"): "holds one array, not the four of an .npz",
        str(tmp_path / "objects.npz"): "cannot be read .*store numeric arrays",
    }
    for path, says in cases.items():
        with pytest.raises(DataError, match=says) as e:
            data.load("arrays", path=path, probe_size=1)
        assert "\n" not in str(e.value), path


# --------------------------------------------------------------------------- data=image_folder


def write_image_folder(root: Path, layout: dict, shape=(6, 5), mode="RGB", seed=0) -> dict:
    """PNGs under root/<split>/<class>/<i>.png; layout maps split -> {class: count}.
    Returns split -> list of (class, pixels) in the order bnlab must read them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    written: dict = {}
    for split, classes in layout.items():
        written[split] = []
        for cls in sorted(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(classes[cls]):
                px = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
                Image.fromarray(px[..., 0] if channels == 1 else px, mode).save(
                    root / split / cls / f"{i:03d}.png"
                )
                written[split].append((cls, px))
    return written


def test_image_folder_roundtrip(tmp_path):
    root = tmp_path / "imgs"
    layout = {"train": {"dog": 4, "cat": 3, "ant": 2}, "test": {"dog": 2, "cat": 2}}
    written = write_image_folder(root, layout)
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "cat" / "README.txt").write_text("not an image")
    ds = data.load("image_folder", path=str(root), scale=False, probe_size=4)
    assert ds.class_names == ("ant", "cat", "dog") and ds.num_classes == 3
    assert ds.image_shape == (6, 5, 3) and ds.train_x.shape == (9, 6, 5, 3)
    names = list(ds.class_names)
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        np.testing.assert_array_equal(x, np.stack([p for _, p in written[split]]))
        np.testing.assert_array_equal(y, [names.index(c) for c, _ in written[split]])
    assert str(root) in ds.source


def test_image_folder_grey_and_converted_modes(tmp_path):
    from PIL import Image

    root = tmp_path / "grey"
    written = write_image_folder(root, {"train": {"a": 2, "b": 2}, "test": {"a": 1}}, mode="L")
    Image.new("1", (5, 6), 1).save(root / "test" / "a" / "bw.png")  # 1-bit: grey 255
    ds = data.load("image_folder", path=str(root), probe_size=2)
    assert ds.train_x.shape == (4, 6, 5, 1)
    np.testing.assert_allclose(ds.train_x[0], written["train"][0][1] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.test_x[1], np.ones((6, 5, 1), np.float32))

    rgb = tmp_path / "rgb"
    write_image_folder(rgb, {"train": {"a": 1}, "test": {"a": 1}})
    pal = Image.fromarray(np.full((6, 5, 3), 7, np.uint8)).convert("P", palette=Image.ADAPTIVE)
    assert pal.mode == "P"
    pal.save(rgb / "train" / "a" / "pal.png")  # palette: RGB
    ds = data.load("image_folder", path=str(rgb), scale=False, probe_size=1)
    np.testing.assert_array_equal(ds.train_x[1], np.full((6, 5, 3), 7.0))


def test_image_folder_mistakes_are_one_line(tmp_path):
    from PIL import Image

    def fresh(name):
        root = tmp_path / name
        write_image_folder(root, {"train": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}})
        return root

    cases = []
    root = fresh("size")
    Image.new("RGB", (9, 9)).save(root / "test" / "b" / "big.png")
    cases.append((root, "big.png is 9x9 with 3 channels but .*000.png is 6x5 with 3 channels: "
                        "all images must share one size"))  # fmt: skip
    root = fresh("channels")
    Image.new("L", (5, 6)).save(root / "train" / "b" / "grey.png")
    cases.append((root, "grey.png is 6x5 with 1 channel but"))
    root = fresh("loose")
    Image.new("RGB", (5, 6)).save(root / "train" / "stray.png")
    cases.append((root, "stray.png is not in a class folder: put each image in .*/train/<class>/"))
    root = fresh("notest")
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    cases.append((root, "test/ holds no images .* in class folders: lay it out as DIR/train"))
    root = fresh("missing")
    (root / "test").rename(root / "val")
    cases.append((root, "has no test/ folder: lay it out as DIR/train/<class>/"))
    root = fresh("broken")
    (root / "train" / "a" / "zzz.png").write_bytes(b"not a png")
    cases.append((root, "cannot read image .*zzz.png .*: replace or remove it"))
    root = fresh("deep")
    Image.fromarray(np.zeros((6, 5), np.uint16)).save(root / "train" / "a" / "deep.png")
    cases.append((root, "deep.png is a I;16 image .16-bit or float.: save 8-bit"))
    cases.append((tmp_path / "nowhere", "data.path=.*nowhere is not a folder: point it at"))
    for root, says in cases:
        with pytest.raises(DataError, match=says) as e:
            data.load("image_folder", path=str(root), probe_size=1)
        assert "\n" not in str(e.value), root


# --------------------------------------------------------------------------- data=tfds, prepared


def prepare_tiny_tfds(data_dir: Path, splits=("train", "test"), seed=0) -> dict:
    """Prepare `bnlab_tiny` (8x8 RGB PNG images, 3 named classes) under data_dir as
    array_record with a tiny GeneratorBasedBuilder, unregistered (so loading must go
    by the files alone). Returns split -> (images, labels) in record order."""
    from PIL import Image

    from bnlab.data.tfds_source import quiet_tfds

    rng = np.random.default_rng(seed)
    sizes = {"train": 20, "test": 6, "validation": 4}
    written = {
        s: (rng.integers(0, 256, (sizes[s], 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, sizes[s]))
        for s in splits
    }
    with quiet_tfds() as tfds:

        class BnlabTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(
                    builder=self,
                    features=tfds.features.FeaturesDict(
                        {
                            "image": tfds.features.Image(shape=(8, 8, 3)),
                            "label": tfds.features.ClassLabel(names=["ant", "bee", "cat"]),
                        }
                    ),
                    supervised_keys=("image", "label"),
                    disable_shuffling=True,  # records in generation order
                )

            def _split_generators(self, dl_manager):
                return {s: self._generate_examples(s) for s in splits}

            def _generate_examples(self, split):
                for i, (x, y) in enumerate(zip(*written[split], strict=True)):
                    yield i, {"image": Image.fromarray(x), "label": int(y)}  # PNG via Pillow

        builder = BnlabTiny(data_dir=str(data_dir), file_format="array_record")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return written


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, prepare_tiny_tfds(data_dir)


def test_prepared_array_record_tfds_dataset_loads(tiny_tfds):
    data_dir, written = tiny_tfds
    ds = data.load("bnlab_tiny", data_dir=str(data_dir), scale=False, probe_size=6, validation=2)
    assert ds.class_names == ("ant", "bee", "cat") and ds.num_classes == 3
    assert ds.image_shape == (8, 8, 3) and "prepared TFDS, array_record" in ds.source
    np.testing.assert_array_equal(ds.test_x, written["test"][0].astype(np.float32))
    np.testing.assert_array_equal(ds.test_y, written["test"][1])
    x = np.concatenate([ds.train_x, ds.val_x])
    assert sorted(map(bytes, x.astype(np.uint8))) == sorted(map(bytes, written["train"][0]))


def test_prepared_tfds_dataset_needs_no_tensorflow(tiny_tfds):
    """With TensorFlow made unimportable (even where it is installed), it still loads."""
    data_dir, written = tiny_tfds
    code = (
        "import sys\n"
        "class Hide:\n"  # every finder misses tensorflow: as if it were not installed
        "    def __init__(self, inner): self.inner = inner\n"
        "    def __getattr__(self, name): return getattr(self.inner, name)\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow': return None\n"
        "        return self.inner.find_spec(name, path, target)\n"
        "sys.meta_path[:] = [Hide(f) for f in sys.meta_path]\n"
        "from bnlab import data\n"
        f"ds = data.load('bnlab_tiny', data_dir={str(data_dir)!r}, probe_size=6)\n"
        "print(ds.train_x.shape, ds.test_x.shape, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(20, 8, 8, 3) (6, 8, 8, 3) False" in out.stdout


def test_prepared_tfds_dataset_without_a_test_split(tmp_path):
    prepare_tiny_tfds(tmp_path, splits=("train", "validation"))
    with pytest.raises(
        DataError, match="no 'test' split .it has .*validation.*: pick another"
    ) as e:
        data.load("bnlab_tiny", data_dir=str(tmp_path), probe_size=1)
    assert "\n" not in str(e.value)


def test_corrupt_prepared_records_are_one_line(tmp_path):
    prepare_tiny_tfds(tmp_path)
    (shard,) = (tmp_path / "bnlab_tiny" / "1.0.0").glob("bnlab_tiny-train.array_record*")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(
        DataError, match="cannot read the train records of bnlab_tiny .*prepare it again"
    ) as e:
        data.load("bnlab_tiny", data_dir=str(tmp_path), probe_size=1)
    assert "\n" not in str(e.value)


@needs_no_tensorflow
def test_tfrecord_prepared_dataset_says_how_to_prepare_array_record(tmp_path):
    """A dataset prepared as tfrecord (TFDS's default) cannot be read without TensorFlow.
    Its dataset_info.json is what TFDS writes, with the file format it records."""
    prepare_tiny_tfds(tmp_path)
    info_file = tmp_path / "bnlab_tiny" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_file.read_text())
    assert info["fileFormat"] == "array_record"
    info_file.write_text(json.dumps(dict(info, fileFormat="tfrecord")))
    with pytest.raises(DataError, match="prepared as tfrecord, which needs TensorFlow") as e:
        data.load("bnlab_tiny", data_dir=str(tmp_path), probe_size=1)
    msg = str(e.value)
    assert "\n" not in msg and f"--data_dir={tmp_path}" in msg
    assert "tfds build bnlab_tiny" in msg and "--file_format=array_record" in msg


# --------------------------------------------------------------------------- config files


DATA_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "data").glob("*.yaml"))


@pytest.mark.parametrize("group_file", DATA_CONFIGS, ids=lambda p: p.stem)
def test_data_configs_hold_exactly_the_load_keywords(group_file):
    import inspect

    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(group_file))
    assert set(cfg) == set(inspect.signature(data.load).parameters)
    assert set(cfg) == set(inspect.signature(data.check_settings).parameters)
    assert cfg["standardize"] in ("none", "per_pixel")
    assert cfg["probe_split"] in ("train", "validation", "test")


@pytest.mark.parametrize("group", [p.stem for p in DATA_CONFIGS])
def test_data_groups_compose_with_the_typed_schema(group):
    """Every key of every data group is in DataConfig (Hydra rejects unknown keys)."""
    import inspect

    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf
    from trainer import compose

    cfg = compose([f"data={group}", "data.validation=7", "data.validation_seed=3"])
    assert set(OmegaConf.to_container(cfg.data)) == set(inspect.signature(data.load).parameters)
    assert cfg.data.validation == 7 and cfg.data.validation_seed == 3
    with pytest.raises(ConfigCompositionException, match="data.validation"):
        compose([f"data={group}", "data.validation=some"])
