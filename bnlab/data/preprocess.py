"""From raw splits to a :class:`Dataset`: the validation hold-out, float32, scaling,
per-pixel standardization, the fixed probe batch, flattening.
"""

from __future__ import annotations

import numpy as np

from bnlab.data.dataset import DataError, Dataset, Raw

PROBE_AUTO = 1000  # data.probe_size=auto: at most this many examples


def auto_probe_size(split: int, multiple: int = 1) -> int:
    """``data.probe_size=auto``: the smaller of :data:`PROBE_AUTO` and the split's
    ``split`` examples, rounded down to a multiple of ``multiple`` (at least one)."""
    n = min(PROBE_AUTO, split)
    return max(n // multiple * multiple, min(multiple, split), 1)


def hold_out(n: int, validation: int, seed: int) -> np.ndarray:
    """Sorted indices of the `validation` training examples set aside as the validation
    split: default_rng(`seed`) draws them without replacement from range(n), so every
    run with the same seed (every member of a sweep) shares one split."""
    if validation >= n:
        raise DataError(
            f"data.validation={validation} leaves no training examples (the training set "
            f"has {n}): use data.validation={n - 1} or less"
        )
    return np.sort(np.random.default_rng(seed).choice(n, size=validation, replace=False))


def preprocess(
    raw: Raw,
    name: str,
    *,
    scale: bool,
    standardize: str,
    flatten: bool,
    validation: int,
    validation_seed: int,
    probe_size: int | str,
    probe_split: str,
    probe_seed: int,
) -> Dataset:
    """Validation hold-out, float32, optional /pixel_max and per-pixel standardization
    (statistics of the remaining training examples only), probe batch, flatten."""
    shape = tuple(int(s) for s in raw.train_x.shape[1:])
    held = hold_out(len(raw.train_y), validation, validation_seed)
    keep = np.ones(len(raw.train_y), bool)
    keep[held] = False
    xs = {
        "train": raw.train_x[keep].astype(np.float32),
        "validation": raw.train_x[held].astype(np.float32),
        "test": raw.test_x.astype(np.float32),
    }
    # integer class labels as int32; float regression targets as float32
    label = np.float32 if np.issubdtype(raw.train_y.dtype, np.floating) else np.int32
    ys = {
        "train": raw.train_y[keep].astype(label),
        "validation": raw.train_y[held].astype(label),
        "test": raw.test_y.astype(label),
    }
    steps = []
    if scale:
        for x in xs.values():
            x /= raw.pixel_max
        steps.append(f"x/{raw.pixel_max:g}")
    mean = std = None
    if standardize == "per_pixel":
        mean = xs["train"].mean(axis=0)
        std = xs["train"].std(axis=0)
        std[std < 1e-6] = 1.0  # constant pixels (e.g. MNIST borders) stay centred, not inf
        for x in xs.values():
            x -= mean
            x /= std
        steps.append("per-pixel standardized (train mean/std)")

    px, py = xs[probe_split], ys[probe_split]
    if probe_split == "validation" and not len(py):
        raise DataError(
            "data.probe_split=validation needs a validation split: set data.validation "
            "to 1 or more, or use data.probe_split=test"
        )
    if probe_size == "auto":
        probe_size = auto_probe_size(len(py))
    if probe_size > len(py):
        raise DataError(
            f"data.probe_size={probe_size} exceeds the {len(py)} examples of the "
            f"{probe_split} split: use data.probe_size={len(py)} or less"
        )
    idx = np.sort(
        np.random.default_rng(probe_seed).choice(len(py), size=int(probe_size), replace=False)
    )
    xs["probe"], ys["probe"] = px[idx], py[idx]

    if flatten or raw.flat:
        xs = {k: x.reshape(len(x), int(np.prod(shape))) for k, x in xs.items()}
    return Dataset(
        train_x=xs["train"],
        train_y=ys["train"],
        val_x=xs["validation"],
        val_y=ys["validation"],
        test_x=xs["test"],
        test_y=ys["test"],
        probe_x=xs["probe"],
        probe_y=ys["probe"],
        name=name,
        num_classes=raw.num_classes,
        source=raw.source,
        image_shape=shape,  # type: ignore[arg-type]
        class_names=raw.class_names,
        normalization="; ".join(steps) or "raw pixel values",
        mean=mean,
        std=std,
    )
