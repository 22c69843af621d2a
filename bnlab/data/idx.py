"""The IDX image format and the IDX datasets bnlab knows.

:func:`read_idx` reads one IDX file (gzipped or not), :func:`find_idx_files` finds the
four files of a dataset in a folder, :func:`read_idx_split` reads and checks one split.
:data:`IDX_DATASETS` lists Fashion-MNIST, MNIST and KMNIST: upstream URLs and
checksums, image shape, class names and standard local folders.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnlab.data.dataset import DataError, one_line

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


DIGITS = tuple(str(i) for i in range(10))

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
        class_names=DIGITS,
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
# Layout of the prepared TFDS data; bump BUILDER_VERSION when the records change.
BUILDER_NAME = "idx_images"
BUILDER_VERSION = "1.0.0"

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its declared dtype and shape.

    Any file that is not a whole IDX file (unreadable, not gzip or IDX, a magic number
    that names no IDX type or more dimensions than the file holds, truncated) raises
    a one-line :class:`DataError` naming the file.
    """
    path = Path(path)
    todo = "re-download it or point data.dir elsewhere"
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path} ({one_line(e)}): {todo}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() or "missing"
        raise DataError(f"{path} is not an IDX file (bad magic number {magic}): {todo}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex()}: {ndim} dimensions "
            f"in a {len(raw)}-byte file): {todo}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    want, have = math.prod(dims) * dtype.itemsize, len(raw) - header
    if have != want:
        said = f"shape {dims}" if ndim <= 6 else f"declares {ndim} dimensions"
        raise DataError(
            f"{path} is truncated or corrupt (magic number {raw[:4].hex()}, {said}: "
            f"{want} data bytes, the file has {have}): {todo}"
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
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.shape[1:] != (h, w, c):
        raise DataError(
            f"{images} holds {x.dtype} images of shape {x.shape[1:]}, but {spec.name} "
            f"expects uint8 {h}x{w}x{c}: check which dataset data.dir points at"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{labels} has {y.shape} labels for {len(x)} images in {images}: "
            "the image and label files do not belong together"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{labels} holds {y.dtype} labels, not integers: check which dataset data.dir "
            f"points at ({spec.name} expected)"
        )
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= len(spec.class_names)):
        raise DataError(
            f"{labels} has labels outside 0..{len(spec.class_names) - 1}: "
            f"check which dataset data.dir points at ({spec.name} expected)"
        )
    return x, y
