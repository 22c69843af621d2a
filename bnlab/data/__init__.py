"""Datasets into host memory, preprocessed, with a fixed probe batch: :func:`load`.

Where the images come from (by ``data.name``):

* ``digits``: scikit-learn's bundled 8x8 digits; always works, no files, no network.
* IDX datasets (``fashion_mnist``, ``mnist``, ``kmnist``): from ``data.dir``, the
  prepared cache in ``data.data_dir``, a standard local folder
  (``/usr/share/datasets/fashion-mnist`` from the Debian package
  ``dataset-fashion-mnist``), else a checksummed download (:mod:`.idx_source`).
* ``arrays``: your own ``.npz`` at ``data.path`` (x_train, y_train, x_test, y_test).
* ``image_folder``: a folder at ``data.path`` with ``train/<class>/`` and
  ``test/<class>/`` image files, read with Pillow.
* any other name: a TFDS dataset prepared as array_record in ``data.data_dir``, read
  without TensorFlow; else stock TFDS, which needs TensorFlow
  (``uv sync --extra tfds-full``).

:func:`check_settings` raises the errors that need no data (call it before a long
load); :func:`load` calls it first. Every error is a one-line :class:`DataError`, a
:class:`bnlab.errors.UserError`.

Modules: :mod:`.dataset` (Dataset, DataError), :mod:`.idx` (the IDX format and the
dataset table), :mod:`.idx_source` and :mod:`.idx_builder` (finding and preparing IDX
datasets), :mod:`.arrays` (digits, npz, the checks of arrays from outside),
:mod:`.image_folder`, :mod:`.tfds_source`, :mod:`.network`, :mod:`.preprocess`.
"""

from __future__ import annotations

from bnlab.data.arrays import load_digits, load_npz
from bnlab.data.dataset import DataError, Dataset
from bnlab.data.idx import (
    BUILDER_NAME,
    BUILDER_VERSION,
    IDX_DATASETS,
    IDX_FILES,
    IdxSpec,
    find_idx_files,
    read_idx,
    read_idx_split,
)
from bnlab.data.idx_source import CACHE_FILE, load_idx
from bnlab.data.image_folder import load_image_folder
from bnlab.data.preprocess import preprocess
from bnlab.data.tfds_source import load_tfds

# Sources that read data.path, and what the path must be.
PATH_SOURCES = {"arrays": "FILE.npz", "image_folder": "DIR"}


def check_settings(
    name: str,
    *,
    dir: str | None = None,
    path: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    scale: bool = True,
    standardize: str = "none",
    flatten: bool = False,
    validation: int = 0,
    validation_seed: int = 0,
    probe_size: int | str = "auto",
    probe_split: str = "test",
    probe_seed: int = 0,
) -> None:
    """Raise a one-line DataError for a setting that is wrong on its face, before any
    data loads (the same keywords as :func:`load`; limits that depend on the size of
    a split are checked when the data is there)."""
    if standardize not in ("none", "per_pixel"):
        raise DataError(f"data.standardize={standardize!r} is not known: use none or per_pixel")
    if probe_split not in ("train", "validation", "test"):
        raise DataError(
            f"data.probe_split={probe_split!r} is not known: use train, validation or test"
        )
    if probe_size != "auto" and not isinstance(probe_size, int):
        raise DataError(f"data.probe_size={probe_size!r} is not a size: use 1 or more, or auto")
    if probe_size != "auto" and probe_size < 1:
        raise DataError(f"data.probe_size={probe_size} is below 1: use 1 or more")
    if validation < 0:
        raise DataError(f"data.validation={validation} is negative: use 0 (none) or more")
    if probe_split == "validation" and validation == 0:
        raise DataError(
            "data.probe_split=validation needs a validation split: set data.validation "
            "to 1 or more, or use data.probe_split=test"
        )
    for key, seed in (("validation_seed", validation_seed), ("probe_seed", probe_seed)):
        if seed < 0:
            raise DataError(f"data.{key}={seed} is negative: use 0 or more")
    if dir is not None and name not in IDX_DATASETS:
        raise DataError(
            f"data.dir is for IDX datasets ({', '.join(IDX_DATASETS)}), not {name!r}: "
            "set data.dir=null or pick an IDX dataset"
        )
    if name in PATH_SOURCES and path is None:
        raise DataError(f"data={name} needs data.path={PATH_SOURCES[name]}: set it")
    if path is not None and name not in PATH_SOURCES:
        uses = " and ".join(f"data={k} ({v})" for k, v in PATH_SOURCES.items())
        raise DataError(f"data.path is for {uses}, not {name!r}: set data.path=null")


def load(
    name: str,
    *,
    dir: str | None = None,
    path: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    scale: bool = True,
    standardize: str = "none",
    flatten: bool = False,
    validation: int = 0,
    validation_seed: int = 0,
    probe_size: int | str = "auto",
    probe_split: str = "test",
    probe_seed: int = 0,
) -> Dataset:
    """Load a dataset by name into host memory, preprocessed, with a fixed probe batch.

    `dir`: folder with the IDX files (IDX datasets only; wins over cache and defaults).
    `path`: the .npz of ``name="arrays"`` (see :mod:`bnlab.data.arrays` for the rules),
    or the folder of ``name="image_folder"`` (see :mod:`bnlab.data.image_folder`).
    `data_dir`: TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    `download`: allow a download when nothing is local. `scale` divides by the pixel
    maximum (255; 16 for digits) to [0, 1]. `standardize="per_pixel"` then subtracts
    the train mean and divides by the train std of each pixel. `flatten` reshapes
    images to (N, H*W*C) for MLPs. `validation` training examples, drawn without
    replacement with numpy's default_rng(`validation_seed`), leave the training set
    for the validation split (standardization uses the remaining training examples).
    The probe batch holds `probe_size` examples (1 up to the size of the split) drawn
    without replacement from `probe_split` (train, validation or test) with
    default_rng(`probe_seed`), sorted by index, and stays in its split;
    ``probe_size="auto"`` is the smaller of 1,000 and the split (a run then keeps the
    first multiple of ghost BN's virtual batch: :func:`bnlab.run.build.load_data`).
    Raises DataError (one line) when a setting is wrong or the data cannot be had.
    """
    settings = dict(
        dir=dir,
        path=path,
        data_dir=data_dir,
        download=download,
        scale=scale,
        standardize=standardize,
        flatten=flatten,
        validation=validation,
        validation_seed=validation_seed,
        probe_size=probe_size,
        probe_split=probe_split,
        probe_seed=probe_seed,
    )
    check_settings(name, **settings)
    if name == "digits":
        raw = load_digits()
    elif name in IDX_DATASETS:
        raw = load_idx(IDX_DATASETS[name], dir, data_dir, download)
    elif name == "arrays":
        raw = load_npz(path)  # type: ignore[arg-type]  # check_settings made sure
    elif name == "image_folder":
        raw = load_image_folder(path)  # type: ignore[arg-type]
    else:
        raw = load_tfds(name, data_dir, download)
    return preprocess(
        raw,
        name,
        scale=scale,
        standardize=standardize,
        flatten=flatten,
        validation=validation,
        validation_seed=validation_seed,
        probe_size=probe_size,
        probe_split=probe_split,
        probe_seed=probe_seed,
    )


__all__ = [
    "BUILDER_NAME",
    "BUILDER_VERSION",
    "CACHE_FILE",
    "IDX_DATASETS",
    "IDX_FILES",
    "PATH_SOURCES",
    "DataError",
    "Dataset",
    "IdxSpec",
    "check_settings",
    "find_idx_files",
    "load",
    "read_idx",
    "read_idx_split",
]
