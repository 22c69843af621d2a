"""Arrays already in memory or on disk: scikit-learn's bundled digits."""

from __future__ import annotations

import numpy as np

from bnlab.data.dataset import Raw
from bnlab.data.idx import DIGITS


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
