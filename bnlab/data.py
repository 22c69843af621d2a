"""Datasets into memory, preprocessing, and on-device batch indices.

Where the images come from (``load``):

* ``digits``: scikit-learn's bundled 8x8 digits; always works, no files, no network.
* IDX datasets (``fashion_mnist``, ``mnist``, ``kmnist``): through the TFDS builder in
  ``bnlab.idx_builder`` (array_record, no TensorFlow needed), from the first of
  an explicit ``dir``; the prepared cache in ``data_dir``; a standard local folder
  (``/usr/share/datasets/fashion-mnist`` from the Debian package
  ``dataset-fashion-mnist``); else a download from the upstream URLs with the
  upstream checksums.
* any other name: stock TFDS, which needs TensorFlow (``uv sync --extra tfds-full``).

The prepared cache is the TFDS data under
``<data_dir>/idx_images/<name>/<version>/`` plus ``bnlab-arrays.npz`` beside it:
reading 70k records back through ``tfds.data_source`` takes ~3 s, the npz < 0.2 s,
so a cached load never imports TFDS. When nothing is local and the download host
cannot be reached, ``load`` raises ``DataError`` within a few seconds.

This module imports nothing else of bnlab at import time (``idx_builder`` is
imported only when a dataset has to be prepared).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnlab.errors import UserError, say

# --------------------------------------------------------------------------- errors


class DataError(UserError):
    """A one-line, user-facing data problem (what went wrong and what to do)."""


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/test splits and a fixed probe batch, preprocessed, in host memory.

    Images are float32 NHWC (or flattened to (N, H*W*C)); labels int32. The probe
    batch is a seeded subset of one split (kept in that split too), so probes see
    the same inputs at every step.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    probe_x: np.ndarray
    probe_y: np.ndarray
    name: str
    num_classes: int
    source: str
    image_shape: tuple[int, int, int] = (0, 0, 0)  # (H, W, C) before any flattening
    class_names: tuple[str, ...] = ()
    normalization: str = ""  # one line, e.g. "x/255; per-pixel standardized (train mean/std)"
    mean: np.ndarray | None = None  # per-pixel (H, W, C) train mean when standardized
    std: np.ndarray | None = None  # per-pixel train std (0 replaced by 1) when standardized


# --------------------------------------------------------------------------- IDX datasets

# Split file stems as published upstream; the reader also accepts unzipped files
# and the dotted names some unpackers produce (train-images.idx3-ubyte).
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxSpec:
    """What bnlab knows about one IDX dataset: where to find it, how to check it."""

    name: str
    title: str
    homepage: str
    url: str  # base URL; file URLs are url + IDX_FILES[...] + ".gz"
    checksums: dict[str, tuple[int, str]]  # key of IDX_FILES -> (size, sha256) of the .gz
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    local_dirs: tuple[str, ...] = ()  # standard system locations, checked in order
    debian_package: str | None = None

    def file_url(self, key: str) -> str:
        return self.url + IDX_FILES[key] + ".gz"


_DIGITS = tuple(str(i) for i in range(10))

# Sizes and sha256 of the upstream .gz files (the values TFDS's stock builders use).
IDX_DATASETS: dict[str, IdxSpec] = {
    "fashion_mnist": IdxSpec(
        name="fashion_mnist",
        title="Fashion-MNIST",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        checksums={
            "train_images": (
                26421880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            "train_labels": (
                29515,
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            "test_images": (
                4422102,
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            "test_labels": (
                5148,
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        },
        shape=(28, 28, 1),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        local_dirs=(
            "/usr/share/datasets/fashion-mnist",
            "/usr/local/share/datasets/fashion-mnist",
        ),
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": IdxSpec(
        name="mnist",
        title="MNIST",
        homepage="http://yann.lecun.com/exdb/mnist/",
        url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        checksums={
            "train_images": (
                9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train_labels": (
                28881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "test_images": (
                1648877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "test_labels": (
                4542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
        shape=(28, 28, 1),
        class_names=_DIGITS,
        local_dirs=("/usr/share/datasets/mnist", "/usr/local/share/datasets/mnist"),
    ),
    "kmnist": IdxSpec(
        name="kmnist",
        title="Kuzushiji-MNIST",
        homepage="https://github.com/rois-codh/kmnist",
        url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        checksums={
            "train_images": (
                18165135,
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            ),
            "train_labels": (
                29497,
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            ),
            "test_images": (
                3041136,
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            ),
            "test_labels": (
                5120,
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            ),
        },
        shape=(28, 28, 1),
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        local_dirs=("/usr/share/datasets/kmnist", "/usr/local/share/datasets/kmnist"),
    ),
}

# Layout of the prepared cache; bump BUILDER_VERSION in idx_builder when records change.
BUILDER_NAME = "idx_images"
BUILDER_VERSION = "1.0.0"
CACHE_FILE = "bnlab-arrays.npz"
_CACHE_FORMAT = 1
CONNECT_TIMEOUT_S = 3.0  # how long the pre-download connectivity check may take

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its declared dtype and shape."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(
            f"cannot read IDX file {path} ({e}): re-download it or point data.dir elsewhere"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number): re-download it or point data.dir elsewhere"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(dims)) * dtype.itemsize:
        raise DataError(
            f"{path} is truncated or corrupt (header says {dims}, file has "
            f"{len(raw) - header} data bytes): re-download it or point data.dir elsewhere"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Map each key of IDX_FILES to its file in `directory`; keys not found are absent."""
    directory = Path(directory)
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        dotted = stem.replace("-idx", ".idx", 1)
        for candidate in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
            if (directory / candidate).is_file():
                found[key] = directory / candidate
                break
    return found


def read_idx_split(
    images: str | os.PathLike, labels: str | os.PathLike, spec: IdxSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split: uint8 images (N, H, W, C) and int64 labels (N,), file order."""
    x, y = read_idx(images), read_idx(labels)
    h, w, c = spec.shape
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[1:3] != (h, w):
        raise DataError(
            f"{images} holds {x.dtype} images of shape {x.shape[1:]}, but {spec.name} "
            f"expects uint8 {h}x{w}: check which dataset data.dir points at"
        )
    x = x.reshape(len(x), h, w, c)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{labels} has {y.shape} labels for {len(x)} images in {images}: "
            "the image and label files do not belong together"
        )
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= len(spec.class_names)):
        raise DataError(
            f"{labels} has labels outside 0..{len(spec.class_names) - 1}: "
            f"check which dataset data.dir points at ({spec.name} expected)"
        )
    return x, y


# --------------------------------------------------------------------------- raw splits


@dataclass(frozen=True)
class _Raw:
    """Unprocessed splits: images (N, H, W, C) in [0, pixel_max], integer labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    pixel_max: float
    source: str


def _default_data_dir(data_dir: str | None) -> Path:
    """`data_dir`, else $TFDS_DATA_DIR (read now, not at import), else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(chosen).expanduser().absolute()


def _load_digits() -> _Raw:
    """scikit-learn's 1,797 bundled 8x8 digits: first 1,500 train, last 297 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]  # values 0..16
    y = d.target.astype(np.int64)
    return _Raw(
        x[:1500],
        y[:1500],
        x[1500:],
        y[1500:],
        num_classes=10,
        class_names=_DIGITS,
        pixel_max=16.0,
        source="sklearn load_digits (bundled; first 1500 train, last 297 test)",
    )


# ---- the IDX path: explicit dir -> prepared cache -> standard dirs -> download


def _fingerprint(files: dict[str, Path]) -> dict[str, list[Any]]:
    """Names, sizes and mtimes of the source files, to notice when data.dir changed."""
    out = {}
    for key, p in sorted(files.items()):
        st = p.stat()
        out[key] = [p.name, st.st_size, st.st_mtime_ns]
    return out


def _read_cache(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The npz cache and its origin record, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != _CACHE_FORMAT:
                return None
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            origin = json.loads(str(z["origin"]))
    except (OSError, KeyError, ValueError):
        return None
    return arrays, origin


def _write_cache(path: Path, arrays: dict[str, np.ndarray], origin: dict[str, Any]) -> None:
    """Write the npz cache atomically (temp file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bnlab-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=_CACHE_FORMAT, origin=np.array(json.dumps(origin)), **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the cache is shareable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so parallel runs (sweeps) prepare a dataset once."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # closed by the `with f` below
    except (ImportError, OSError):  # not POSIX, or a read-only data_dir: go on unlocked
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _raw_from_arrays(spec: IdxSpec, arrays: dict[str, np.ndarray], source: str) -> _Raw:
    return _Raw(
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        num_classes=len(spec.class_names),
        class_names=spec.class_names,
        pixel_max=255.0,
        source=source,
    )


def _origin_text(origin: dict[str, Any]) -> str:
    return origin.get("path") or origin.get("kind", "unknown source")


def _cached(spec: IdxSpec, cache: Path) -> _Raw | None:
    """The dataset from its prepared npz cache (the source says what it is a cache of),
    or None when there is no readable cache."""
    hit = _read_cache(cache)
    if hit is None:
        return None
    return _raw_from_arrays(spec, hit[0], f"{cache.parent} (cache of {_origin_text(hit[1])})")


def _load_idx(spec: IdxSpec, dir: str | None, data_dir: str | None, download: bool) -> _Raw:
    """Find, prepare (once) and return an IDX dataset; see the module docstring for the order."""
    root = _default_data_dir(data_dir)
    version_dir = root / BUILDER_NAME / spec.name / BUILDER_VERSION
    cache = version_dir / CACHE_FILE
    lock = root / BUILDER_NAME / spec.name / ".bnlab.lock"

    if dir is not None:
        src = Path(dir).expanduser().absolute()
        if not src.is_dir():
            raise DataError(
                f"data.dir={src} is not a folder: point it at the folder with the four "
                f"{spec.title} IDX files, or set data.dir=null"
            )
        files = find_idx_files(src)
        if len(files) < len(IDX_FILES):
            missing = ", ".join(IDX_FILES[k] + ".gz" for k in IDX_FILES if k not in files)
            raise DataError(
                f"data.dir={src} lacks {spec.title} IDX files ({missing}): point data.dir "
                "at the folder holding all four, or set data.dir=null to use the cache, "
                "standard locations or a download"
            )
        origin = {"kind": "dir", "path": str(src), "files": _fingerprint(files)}
        with _file_lock(lock):
            hit = _read_cache(cache)
            same = hit is not None and all(hit[1].get(k) == origin[k] for k in ("path", "files"))
            if same:
                return _raw_from_arrays(spec, hit[0], f"{version_dir} (cache of {src})")
            # Different or changed source: rebuild from data.dir.
            shutil.rmtree(version_dir, ignore_errors=True)
            return _prepare_idx(spec, root, src, origin, files)

    if (raw := _cached(spec, cache)) is not None:
        return raw

    with _file_lock(lock):
        if (raw := _cached(spec, cache)) is not None:  # another process prepared it meanwhile
            return raw
        if (version_dir / "dataset_info.json").is_file():
            origin = {"kind": "tfds", "path": "existing TFDS records"}
            return _prepare_idx(spec, root, None, origin, None)

        manual = root / "downloads" / "manual" / spec.name
        looked = [str(version_dir), *spec.local_dirs, str(manual)]
        for d in (*spec.local_dirs, str(manual)):
            files = find_idx_files(d)
            if len(files) == len(IDX_FILES):
                origin = {"kind": "local", "path": str(Path(d)), "files": _fingerprint(files)}
                return _prepare_idx(spec, root, Path(d), origin, files)

        fixes = []
        if spec.debian_package:
            fixes.append(f"install the Debian package (sudo apt-get install {spec.debian_package})")
        fixes += [
            f"set data.dir=DIR to a folder with the four {spec.title} IDX .gz files",
            "or use data=digits (bundled, always works)",
        ]
        where = f"{spec.title} not found locally (looked in {', '.join(looked)})"
        if not download:
            raise DataError(f"{where} and data.download=false: {'; '.join(fixes)}")
        problem = _unreachable(spec.url)
        if problem:
            raise DataError(f"{where} and cannot download ({problem}): {'; '.join(fixes)}")
        origin = {"kind": "downloaded", "path": f"a download of {spec.url}"}
        return _prepare_idx(spec, root, None, origin, None, fixes=fixes)


def _prepare_idx(
    spec: IdxSpec,
    root: Path,
    src: Path | None,
    origin: dict[str, Any],
    files: dict[str, Path] | None,
    fixes: list[str] | None = None,
) -> _Raw:
    """Run the TFDS builder (from `src`, or by download when None), read back, write the npz."""
    if files is not None:  # check the files here, so bad input gets our one-line error
        for split in ("train", "test"):
            read_idx_split(files[f"{split}_images"], files[f"{split}_labels"], spec)

    from bnlab import idx_builder  # imports TFDS (~1 s); only needed when preparing

    version_dir = root / BUILDER_NAME / spec.name / BUILDER_VERSION
    if not (version_dir / "dataset_info.json").is_file():
        say(
            f"preparing {spec.name} (first time only) from {_origin_text(origin)} into {version_dir}"
        )
    try:
        arrays = idx_builder.prepare_and_read(spec.name, root, src)
        _write_cache(version_dir / CACHE_FILE, arrays, origin)
    except DataError:
        raise
    except PermissionError as e:
        raise DataError(
            f"cannot write the prepared {spec.name} under {root} ({e.strerror}: {e.filename}): "
            "set data.data_dir to a writable folder"
        ) from None
    except Exception as e:  # TFDS download/checksum/IO failures: one line, not a traceback
        if origin.get("kind") != "downloaded":
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        todo = "; ".join(fixes or [])
        raise DataError(
            f"downloading {spec.title} from {spec.url} failed ({type(e).__name__}: {first}): {todo}"
        ) from None
    return _raw_from_arrays(spec, arrays, f"{version_dir} (prepared from {_origin_text(origin)})")


def _unreachable(url: str, timeout: float | None = None) -> str | None:
    """None if a TCP connection to the URL's host (or its proxy) opens in time (CONNECT_TIMEOUT_S),
    else a short reason. Runs in a thread so a slow DNS lookup cannot hang us either."""
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or "", p.port or 80
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"no connection to {host}:{port}: {e.strerror or e}")

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"no connection to {host}:{port} within {timeout:g} s"


# ---- any other name: stock TFDS (needs TensorFlow, the `tfds-full` extra)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[Any]:
    """Import TFDS with its progress bars, absl logging and stdout banners silenced."""
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import tensorflow_datasets as tfds

            tfds.disable_progress_bar()
            yield tfds
    finally:
        absl_logging.set_verbosity(old)


def _load_stock_tfds(name: str, data_dir: str | None, download: bool) -> _Raw:
    """A stock TFDS image-classification dataset, via `as_supervised` (TensorFlow required)."""
    root = _default_data_dir(data_dir)
    known = ", ".join(["digits", *IDX_DATASETS])
    with quiet_tfds() as tfds:
        try:
            tfds.builder_cls(name.split("/")[0].split(":")[0])
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(
                f"unknown dataset {name!r}: use one of {known} or a TFDS name (tfds.list_builders())"
            ) from None
        if importlib.util.find_spec("tensorflow") is None:
            raise DataError(
                f"dataset {name!r} goes through stock TFDS, which needs TensorFlow: install the "
                "extra (uv sync --extra tfds-full, or pip install 'bnlab[tfds-full]'), "
                f"or use one of {known}"
            )
        builder = tfds.builder(name, data_dir=str(root))
        if not (builder.data_path / "dataset_info.json").exists():
            where = f"{name} is not prepared in {root}"
            if not download:
                raise DataError(
                    f"{where} and data.download=false: set data.download=true or use data=digits"
                )
            for url in list(builder.url_infos or {})[:1]:
                problem = _unreachable(url)
                if problem:
                    raise DataError(
                        f"{where} and cannot download ({problem}): use data=digits or prepare it where online"
                    )
            say(f"preparing {name} (first time only) into {builder.data_path}")
            cfg = tfds.download.DownloadConfig(try_download_gcs=False)
            builder.download_and_prepare(download_config=cfg)
        keys = builder.info.supervised_keys
        if not keys or len(keys) != 2:
            raise DataError(
                f"{name} has no (image, label) supervised keys: pick an image classification dataset"
            )
        label = builder.info.features[keys[1]]
        splits = {}
        for split in ("train", "test"):
            if split not in builder.info.splits:
                have = ", ".join(builder.info.splits)
                raise DataError(
                    f"{name} has no {split!r} split (it has {have}): pick another dataset"
                )
            ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
            x, y = tfds.as_numpy(ds)
            x = np.asarray(x)
            if x.ndim == 3:
                x = x[..., None]
            if x.ndim != 4:
                raise DataError(
                    f"{name} inputs have shape {x.shape[1:]}, not images: pick an image dataset"
                )
            splits[split] = (x, np.asarray(y, np.int64))
    num_classes = int(getattr(label, "num_classes", 0) or splits["train"][1].max() + 1)
    names = tuple(getattr(label, "names", None) or (str(i) for i in range(num_classes)))
    pixel_max = 255.0 if splits["train"][0].dtype == np.uint8 else 1.0
    return _Raw(
        *splits["train"],
        *splits["test"],
        num_classes=num_classes,
        class_names=names,
        pixel_max=pixel_max,
        source=f"{builder.data_path} (stock TFDS)",
    )


# --------------------------------------------------------------------------- preprocessing


def _preprocess(
    raw: _Raw,
    name: str,
    *,
    scale: bool,
    standardize: str,
    flatten: bool,
    probe_size: int,
    probe_split: str,
    probe_seed: int,
) -> Dataset:
    """float32, optional /pixel_max and per-pixel standardization, probe batch, flatten."""
    shape = tuple(int(s) for s in raw.train_x.shape[1:])
    tx = raw.train_x.astype(np.float32)
    vx = raw.test_x.astype(np.float32)
    steps = []
    if scale:
        tx /= raw.pixel_max
        vx /= raw.pixel_max
        steps.append(f"x/{raw.pixel_max:g}")
    mean = std = None
    if standardize == "per_pixel":
        mean = tx.mean(axis=0)
        std = tx.std(axis=0)
        std[std < 1e-6] = 1.0  # constant pixels (e.g. MNIST borders) stay centred, not inf
        tx -= mean
        tx /= std
        vx -= mean
        vx /= std
        steps.append("per-pixel standardized (train mean/std)")
    ty = raw.train_y.astype(np.int32)
    vy = raw.test_y.astype(np.int32)

    px, py = (tx, ty) if probe_split == "train" else (vx, vy)
    k = min(probe_size, len(py))
    idx = np.sort(np.random.default_rng(probe_seed).choice(len(py), size=k, replace=False))
    probe_x, probe_y = px[idx], py[idx]

    if flatten:
        tx, vx, probe_x = (a.reshape(len(a), -1) for a in (tx, vx, probe_x))
    return Dataset(
        train_x=tx,
        train_y=ty,
        test_x=vx,
        test_y=vy,
        probe_x=probe_x,
        probe_y=probe_y,
        name=name,
        num_classes=raw.num_classes,
        source=raw.source,
        image_shape=shape,  # type: ignore[arg-type]
        class_names=raw.class_names,
        normalization="; ".join(steps) or "raw pixel values",
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------- entry point


def load(
    name: str,
    *,
    dir: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    scale: bool = True,
    standardize: str = "none",
    flatten: bool = False,
    probe_size: int = 1000,
    probe_split: str = "test",
    probe_seed: int = 0,
) -> Dataset:
    """Load a dataset by name into host memory, preprocessed, with a fixed probe batch.

    `dir`: folder with the IDX files (IDX datasets only; wins over cache and defaults).
    `data_dir`: TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    `download`: allow a download when nothing is local. `scale` divides by the pixel
    maximum (255; 16 for digits) to [0, 1]. `standardize="per_pixel"` then subtracts
    the train mean and divides by the train std of each pixel. `flatten` reshapes
    images to (N, H*W*C) for MLPs. The probe batch holds `probe_size` examples
    (at most the whole split) drawn without replacement from `probe_split` with
    numpy's default_rng(`probe_seed`), sorted by index, and stays in its split.
    Raises DataError (one line) when the data cannot be had.
    """
    if standardize not in ("none", "per_pixel"):
        raise DataError(f"data.standardize={standardize!r} is not known: use none or per_pixel")
    if probe_split not in ("train", "test"):
        raise DataError(f"data.probe_split={probe_split!r} is not known: use train or test")
    if probe_size < 0:
        raise DataError(f"data.probe_size={probe_size} is negative: use 0 or more")
    if name == "digits":
        raw = _load_digits()
    elif name in IDX_DATASETS:
        raw = _load_idx(IDX_DATASETS[name], dir, data_dir, download)
    elif dir is not None:
        raise DataError(
            f"data.dir is for IDX datasets ({', '.join(IDX_DATASETS)}), not {name!r}: "
            "set data.dir=null or pick an IDX dataset"
        )
    else:
        raw = _load_stock_tfds(name, data_dir, download)
    return _preprocess(
        raw,
        name,
        scale=scale,
        standardize=standardize,
        flatten=flatten,
        probe_size=probe_size,
        probe_split=probe_split,
        probe_seed=probe_seed,
    )


# --------------------------------------------------------------------------- batching


def epoch_permutation(key: jax.Array, epoch: int | jax.Array, n: int) -> jax.Array:
    """The order of examples in `epoch`: a permutation of arange(n), fresh each epoch."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def batch_indices(key: jax.Array, step: int | jax.Array, n: int, batch_size: int) -> jax.Array:
    """Indices of training batch `step`, sampled without replacement within each epoch.

    steps_per_epoch = n // batch_size (the last partial batch is dropped); step s
    takes slice s % steps_per_epoch of epoch_permutation(key, s // steps_per_epoch, n).
    `n` and `batch_size` are static; `step` may be traced (jit, lax.scan). Each
    call recomputes the epoch permutation (one sort of n keys), which is cheap next
    to a training step for datasets of MNIST size.
    """
    if batch_size < 1 or n // batch_size < 1:
        raise DataError(
            f"batch_size={batch_size} does not fit a training set of {n} examples: "
            f"use a batch size between 1 and {n}"
        )
    steps_per_epoch = n // batch_size
    step = jnp.asarray(step)
    perm = epoch_permutation(key, step // steps_per_epoch, n)
    start = (step % steps_per_epoch) * batch_size
    return jax.lax.dynamic_slice(perm, (start,), (batch_size,))


__all__ = [
    "BUILDER_NAME",
    "BUILDER_VERSION",
    "CACHE_FILE",
    "DataError",
    "Dataset",
    "IDX_DATASETS",
    "IDX_FILES",
    "IdxSpec",
    "batch_indices",
    "epoch_permutation",
    "find_idx_files",
    "load",
    "read_idx",
    "read_idx_split",
]
