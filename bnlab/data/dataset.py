"""What loading hands back (:class:`Dataset`), what every source hands over (:class:`Raw`),
and the one error of the data layer (:class:`DataError`, one line, what to do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnlab.errors import UserError


class DataError(UserError):
    """A one-line, user-facing data problem (what went wrong and what to do)."""


def one_line(text: str) -> str:
    """The last non-empty line of `text`: libraries that re-raise our errors put their
    context (sometimes a whole example) in front, and our message at the end."""
    lines = [s.strip() for s in str(text).splitlines() if s.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/validation/test splits and a fixed probe batch, preprocessed, in host memory.

    Images are float32 NHWC (or flattened to (N, H*W*C)); labels int32, or float32
    targets (N,) / (N, K) for a task without classes (``num_classes`` is then K,
    :attr:`classes` false). The validation
    split holds ``data.validation`` training examples set aside by ``data.validation_seed``
    (removed from ``train_*``; empty arrays of the same dtype and example shape when 0).
    The probe batch is a seeded subset of one split (kept in that split too), so probes
    see the same inputs at every step.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    probe_x: np.ndarray
    probe_y: np.ndarray
    name: str
    num_classes: int
    source: str
    image_shape: tuple[int, int, int] = (
        0,
        0,
        0,
    )  # (H, W, C) before flattening; (1, 1, D) for vectors
    class_names: tuple[str, ...] = ()
    normalization: str = ""  # one line, e.g. "x/255; per-pixel standardized (train mean/std)"
    mean: np.ndarray | None = None  # per-pixel (H, W, C) train mean when standardized
    std: np.ndarray | None = None  # per-pixel train std (0 replaced by 1) when standardized

    @property
    def classes(self) -> bool:
        """Whether the task has classes (integer labels): else regression targets."""
        return not np.issubdtype(self.train_y.dtype, np.floating)


@dataclass(frozen=True)
class Raw:
    """Unprocessed splits as a source hands them over: images (N, H, W, C) in
    [0, pixel_max] (uint8 or float), integer labels 0..num_classes-1 (or float targets
    (N,) / (N, num_classes), :mod:`bnlab.data.arrays`). `flat` marks
    feature vectors, stored as (N, 1, 1, D), which always come out as (N, D)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    pixel_max: float
    source: str
    flat: bool = False


def default_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir`, else $TFDS_DATA_DIR (read now, not at import), else
    $BNLAB_CACHE/datasets (bnlab's one setting for its caches), else ~/tensorflow_datasets."""
    cache = os.environ.get("BNLAB_CACHE")
    chosen = (
        data_dir
        or os.environ.get("TFDS_DATA_DIR")
        or (os.path.join(cache, "datasets") if cache else "~/tensorflow_datasets")
    )
    return Path(chosen).expanduser().absolute()
