"""From raw splits to a :class:`Dataset`: float32, scaling, per-pixel standardization,
the fixed probe batch, flattening.
"""

from __future__ import annotations

import numpy as np

from bnlab.data.dataset import DataError, Dataset, Raw


def preprocess(
    raw: Raw,
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
    if probe_size > len(py):
        raise DataError(
            f"data.probe_size={probe_size} exceeds the {len(py)} examples of the "
            f"{probe_split} split: use data.probe_size={len(py)} or less"
        )
    idx = np.sort(np.random.default_rng(probe_seed).choice(len(py), size=probe_size, replace=False))
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
