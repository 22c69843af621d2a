"""TFDS datasets by name: stock TFDS through ``as_dataset`` (needs TensorFlow, the
``tfds-full`` extra), and :func:`quiet_tfds` to import TFDS without its chatter.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from bnlab.data import network
from bnlab.data.dataset import DataError, Raw, default_data_dir
from bnlab.data.idx import IDX_DATASETS
from bnlab.errors import say


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


def load_stock_tfds(name: str, data_dir: str | None, download: bool) -> Raw:
    """A stock TFDS image-classification dataset, via `as_supervised` (TensorFlow required)."""
    root = default_data_dir(data_dir)
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
                problem = network.unreachable(url)
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
    return Raw(
        *splits["train"],
        *splits["test"],
        num_classes=num_classes,
        class_names=names,
        pixel_max=pixel_max,
        source=f"{builder.data_path} (stock TFDS)",
    )
