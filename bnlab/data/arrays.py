"""Arrays as they are: scikit-learn's bundled digits, your own ``.npz`` (``data=arrays``),
and the checks every split from outside passes before it becomes a :class:`Raw`.

The rules for arrays from outside (an npz, a folder of images, a prepared TFDS dataset):

* images ``(N, H, W, C)``, grey images ``(N, H, W)`` (one channel), or feature vectors
  ``(N, D)`` (they come out as ``(N, D)`` whatever ``data.flatten`` says);
* pixels are uint8 or float, the same dtype in both splits: ``data.scale=true`` divides
  uint8 by 255; float pixels are taken as they are (scaling divides them by 1), so
  store floats already on the scale you want, or set ``data.standardize=per_pixel``;
* labels are integers 0..K-1, one per example; K is the largest label + 1, or the
  number of class names when the source has them;
* or, for a task without classes (regression, ``data=arrays`` only), float targets of
  shape ``(N,)`` or ``(N, K)`` in both splits: the model has K outputs (1 for ``(N,)``)
  compared to the targets directly (``loss=mean_squared_error`` or your own), and no
  accuracy is recorded.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bnlab.data.dataset import DataError, Raw, one_line
from bnlab.data.idx import DIGITS

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_digits() -> Raw:
    """scikit-learn's 1,797 bundled 8x8 digits: first 1,500 train, last 297 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]  # values 0..16
    y = d.target.astype(np.int64)
    return Raw(
        x[:1500],
        y[:1500],
        x[1500:],
        y[1500:],
        num_classes=10,
        class_names=DIGITS,
        pixel_max=16.0,
        source="sklearn load_digits (bundled; first 1500 train, last 297 test)",
    )


def _check_split(x: np.ndarray, y: np.ndarray, split: str, where: str) -> None:
    xk, yk = f"x_{split}", f"y_{split}"
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: {xk} has shape {x.shape}, not images (N, H, W, C), grey images "
            "(N, H, W) or vectors (N, D): reshape it"
        )
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{where}: {xk} holds {x.dtype} pixels: store uint8 (0..255) or float pixels"
        )
    if not len(x):
        raise DataError(f"{where}: {xk} is empty: each split needs at least one example")
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        raise DataError(f"{where}: {xk} holds NaN or infinite values: replace them")
    if np.issubdtype(y.dtype, np.floating):  # regression targets
        if y.ndim not in (1, 2) or len(y) != len(x):
            raise DataError(
                f"{where}: {yk} has shape {y.shape} for the {len(x)} examples of {xk}: "
                f"give float targets of shape ({len(x)},) or ({len(x)}, K)"
            )
        if not np.isfinite(y).all():
            raise DataError(f"{where}: {yk} holds NaN or infinite targets: replace them")
        return
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{where}: {yk} has shape {y.shape} for the {len(x)} examples of {xk}: "
            f"give one integer label per example, shape ({len(x)},)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where}: {yk} holds {y.dtype} labels: store integer class indices 0..K-1 "
            "(or float targets for regression)"
        )
    if y.min() < 0:
        raise DataError(
            f"{where}: {yk} has negative labels (min {y.min()}): labels are class indices 0..K-1"
        )


def raw_from_splits(
    arrays: dict[str, np.ndarray],
    *,
    where: str,
    source: str,
    class_names: Sequence[str] | None = None,
) -> Raw:
    """Check four arrays (x_train, y_train, x_test, y_test) against the rules above and
    hand them over as :class:`Raw`; `where` starts every error message (e.g. the file)."""
    for split in ("train", "test"):
        _check_split(arrays[f"x_{split}"], arrays[f"y_{split}"], split, where)
    tx, vx = arrays["x_train"], arrays["x_test"]
    if tx.shape[1:] != vx.shape[1:]:
        raise DataError(
            f"{where}: x_test examples have shape {vx.shape[1:]} but x_train examples "
            f"{tx.shape[1:]}: both splits need one shape"
        )
    if tx.dtype != vx.dtype and np.uint8 in (tx.dtype, vx.dtype):
        raise DataError(
            f"{where}: x_train is {tx.dtype} but x_test is {vx.dtype}: store both splits "
            "as uint8 or both as float (they are scaled differently)"
        )
    ty, vy = arrays["y_train"], arrays["y_test"]
    if np.issubdtype(ty.dtype, np.floating) or np.issubdtype(vy.dtype, np.floating):
        return _regression(arrays, where, source, class_names)
    top = int(max(arrays["y_train"].max(), arrays["y_test"].max()))
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) <= top:
            raise DataError(
                f"{where}: {len(class_names)} class names for labels up to {top}: "
                "give one name per class"
            )
    if class_names is None and top >= len(arrays["y_train"]):
        raise DataError(
            f"{where}: a label of {top} makes {top + 1} classes, more than the "
            f"{len(arrays['y_train'])} training examples: labels must be 0..K-1 for K classes"
        )
    num_classes = len(class_names) if class_names is not None else top + 1
    flat = tx.ndim == 2

    def nhwc(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 1, 1, x.shape[1]) if flat else x.reshape(*x.shape[:3], -1)

    return Raw(
        nhwc(tx),
        arrays["y_train"].astype(np.int64),
        nhwc(vx),
        arrays["y_test"].astype(np.int64),
        num_classes=num_classes,
        class_names=class_names or tuple(str(i) for i in range(num_classes)),
        pixel_max=255.0 if tx.dtype == np.uint8 else 1.0,
        source=source,
        flat=flat,
    )


def _nhwc(x: np.ndarray) -> np.ndarray:
    flat = x.ndim == 2
    return x.reshape(len(x), 1, 1, x.shape[1]) if flat else x.reshape(*x.shape[:3], -1)


def _regression(
    arrays: dict[str, np.ndarray], where: str, source: str, class_names: Sequence[str] | None
) -> Raw:
    """Float targets: both splits float, the same number of columns K; no class names."""
    ty, vy = arrays["y_train"], arrays["y_test"]
    if not (np.issubdtype(ty.dtype, np.floating) and np.issubdtype(vy.dtype, np.floating)):
        raise DataError(
            f"{where}: y_train is {ty.dtype} but y_test is {vy.dtype}: store both as integer "
            "class labels or both as float targets"
        )
    if ty.shape[1:] != vy.shape[1:]:
        raise DataError(
            f"{where}: y_train targets have shape {ty.shape[1:]} but y_test {vy.shape[1:]}: "
            "both splits need one number of target columns"
        )
    if class_names is not None:
        raise DataError(f"{where}: class_names beside float targets: leave class_names out")
    k = 1 if ty.ndim == 1 else int(ty.shape[1])
    tx = arrays["x_train"]
    return Raw(
        _nhwc(tx), ty.astype(np.float32), _nhwc(arrays["x_test"]), vy.astype(np.float32),
        num_classes=k, class_names=tuple(f"y{i}" for i in range(k)),
        pixel_max=255.0 if tx.dtype == np.uint8 else 1.0, source=source, flat=tx.ndim == 2,
    )  # fmt: skip


def load_npz(path: str) -> Raw:
    """``data=arrays data.path=FILE.npz``: x_train, y_train, x_test, y_test (as saved by
    ``np.savez``), and optionally class_names (strings, one per class)."""
    p = Path(path).expanduser().absolute()
    todo = "save them with np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)"
    if not p.is_file():
        raise DataError(f"data.path={p} is not a file: point it at an .npz of four arrays")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"data.path={p} is not a readable .npz ({one_line(e)}): {todo}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"data.path={p} holds one array, not the four of an .npz: {todo}")
    with z:
        missing = [k for k in SPLIT_KEYS if k not in z.files]
        if missing:
            has = ", ".join(z.files) or "nothing"
            raise DataError(f"data.path={p} lacks {', '.join(missing)} (it has {has}): {todo}")
        try:
            arrays = {k: z[k] for k in SPLIT_KEYS}
            names = z["class_names"] if "class_names" in z.files else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(
                f"data.path={p} holds an array that cannot be read ({one_line(e)}): store "
                "numeric arrays (no objects), then " + todo
            ) from None
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
        raise DataError(
            f"data.path={p}: class_names is {names.dtype} of shape {names.shape}: store "
            "one string per class, or leave it out"
        )
    return raw_from_splits(
        arrays,
        where=f"data.path={p}",
        source=f"{p} (data=arrays)",
        class_names=None if names is None else [str(n) for n in names],
    )
