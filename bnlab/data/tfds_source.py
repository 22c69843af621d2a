"""TFDS datasets by name (``data=tfds data.name=NAME``).

A dataset already prepared in ``data.data_dir`` in the array_record format is read
through ``tfds.data_source``, with no TensorFlow (TFDS decodes images with Pillow).
Anything else goes through stock TFDS (``as_dataset``), which prepares it on first
use and needs TensorFlow (the ``tfds-full`` extra); without TensorFlow, a dataset that
is not prepared, or prepared as tfrecord, is a one-line error that says how to
prepare it as array_record. :func:`quiet_tfds` imports TFDS without its chatter.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.data import network
from bnlab.data.arrays import raw_from_splits
from bnlab.data.dataset import DataError, Raw, default_data_dir, one_line
from bnlab.data.idx import IDX_DATASETS
from bnlab.errors import say

_READ_BATCH = 1024  # records decoded per data-source call


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


def _known() -> str:
    return ", ".join(["digits", *IDX_DATASETS, "arrays", "image_folder"])


def _prepared(name: str, root: Path) -> Any:
    """The builder of `name` as prepared under `root` (read from its files, no code
    needed), or None when it is not there."""
    from tensorflow_datasets.core import read_only_builder
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    try:
        return read_only_builder.builder_from_files(name, data_dir=str(root))
    except (DatasetNotFoundError, ValueError):  # not prepared, or not a TFDS name at all
        return None


def _registered(tfds: Any, name: str) -> bool:
    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        return False
    return True


def has_tensorflow() -> bool:
    """Whether TensorFlow can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # an import hook refuses it, or a broken entry
        return False


def _file_format(builder: Any) -> str:
    fmt = builder.info.file_format
    return str(getattr(fmt, "value", fmt) or "tfrecord")


def load_tfds(name: str, data_dir: str | None, download: bool) -> Raw:
    """`name` prepared as array_record under `data_dir` (no TensorFlow), else stock TFDS."""
    root = default_data_dir(data_dir)
    has_tf = has_tensorflow()
    with quiet_tfds() as tfds:
        builder = _prepared(name, root)
        if builder is not None and _file_format(builder) == "array_record":
            return _read_prepared(builder, name)
        if has_tf:
            return _load_stock(tfds, name, root, download)
        build = f"tfds build {name} --data_dir={root} --file_format=array_record"
        if builder is not None:
            raise DataError(
                f"{name} in {builder.data_path} is prepared as {_file_format(builder)}, which "
                f"needs TensorFlow to read: prepare it again as array_record ({build}, where "
                "TensorFlow is installed), or install TensorFlow here (uv sync --extra tfds-full)"
            )
        if not _registered(tfds, name):
            raise DataError(
                f"unknown dataset {name!r}: use one of {_known()}, or a TFDS name "
                f"(tfds.list_builders()) prepared in {root}"
            )
        raise DataError(
            f"{name} is not prepared in {root} and preparing it through stock TFDS needs "
            f"TensorFlow: prepare it once as array_record ({build}, where TensorFlow is "
            "installed) and bnlab reads it without TensorFlow, or install TensorFlow here "
            "(uv sync --extra tfds-full, or pip install 'bnlab[tfds-full]')"
        )


def _supervised(builder: Any, name: str) -> tuple[str, str]:
    """The (image, label) feature names, after checking the train and test splits exist."""
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(
            f"{name} has no (image, label) supervised keys: pick an image classification dataset"
        )
    for split in ("train", "test"):
        if split not in builder.info.splits:
            have = ", ".join(builder.info.splits) or "none"
            raise DataError(f"{name} has no {split!r} split (it has {have}): pick another dataset")
    return keys[0], keys[1]


def _class_names(builder: Any, label_key: str) -> list[str] | None:
    names = getattr(builder.info.features[label_key], "names", None)
    return list(names) if names else None


def _read_records(source: Any, image_key: str, label_key: str, where: str) -> tuple:
    """All (image, label) pairs of one data source, in its order, as two arrays."""
    n = len(source)
    x: np.ndarray | None = None
    labels = []
    for start in range(0, n, _READ_BATCH):
        batch = source.__getitems__(list(range(start, min(n, start + _READ_BATCH))))
        for i, record in enumerate(batch, start):
            image = np.asarray(record[image_key])
            if x is None:
                x = np.empty((n, *image.shape), image.dtype)
            elif image.shape != x.shape[1:]:
                raise DataError(
                    f"{where}: record {i} has shape {image.shape} but record 0 {x.shape[1:]}: "
                    "pick a dataset whose images share one size"
                )
            x[i] = image
            labels.append(record[label_key])
    return (np.zeros((0,), np.uint8) if x is None else x), np.asarray(labels)


def _read_prepared(builder: Any, name: str) -> Raw:
    """Every train and test record of a prepared array_record dataset."""
    image_key, label_key = _supervised(builder, name)
    where = f"{name} in {builder.data_path}"
    arrays = {}
    for split in ("train", "test"):
        try:
            source = builder.as_data_source(split=split)
            arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_records(
                source, image_key, label_key, f"{where} ({split})"
            )
        except DataError:
            raise
        except Exception as e:  # missing or corrupt record files, undecodable images
            raise DataError(
                f"cannot read the {split} records of {where} ({type(e).__name__}: "
                f"{one_line(e)[:200]}): delete {builder.data_path} and prepare it again"
            ) from None
    return raw_from_splits(
        arrays,
        where=where,
        source=f"{builder.data_path} (prepared TFDS, array_record)",
        class_names=_class_names(builder, label_key),
    )


def _load_stock(tfds: Any, name: str, root: Path, download: bool) -> Raw:
    """A stock TFDS image-classification dataset, via `as_supervised` (TensorFlow required)."""
    if not _registered(tfds, name):
        raise DataError(
            f"unknown dataset {name!r}: use one of {_known()} or a TFDS name (tfds.list_builders())"
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
    image_key, label_key = _supervised(builder, name)
    arrays = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
        x, y = tfds.as_numpy(ds)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.asarray(x), np.asarray(y)
    return raw_from_splits(
        arrays,
        where=f"{name} in {builder.data_path}",
        source=f"{builder.data_path} (stock TFDS)",
        class_names=_class_names(builder, label_key),
    )
