"""TFDS builder for IDX image datasets (Fashion-MNIST, MNIST, KMNIST), TensorFlow-free.

One builder, ``idx_images``, with one config per entry of ``bnlab.data.idx.IDX_DATASETS``.
It reads the four IDX files from the manual dir when they are all there, else
downloads them from the upstream URLs, checked against the upstream sha256.
Records are written as array_record (TFDS's tfrecord default needs TensorFlow)
and hold the example's position in the IDX file, so the file order can be
restored after TFDS shards them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from bnlab.data.idx import (
    BUILDER_VERSION,
    IDX_DATASETS,
    IDX_FILES,
    find_idx_files,
    read_idx_split,
)
from bnlab.data.tfds_source import quiet_tfds


@dataclasses.dataclass
class IdxConfig(tfds.core.BuilderConfig):
    """One IDX dataset; its files, checksums, shape and classes live in IDX_DATASETS."""


class IdxImages(tfds.core.GeneratorBasedBuilder):
    """IDX image classification datasets from local files or their upstream URLs."""

    VERSION = tfds.core.Version(BUILDER_VERSION)
    RELEASE_NOTES = {"1.0.0": "Images (uint8 HxWxC), labels, and the index in the IDX file."}
    BUILDER_CONFIGS = [IdxConfig(name=n, description=s.title) for n, s in IDX_DATASETS.items()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: put the four IDX files ("
        + ", ".join(f"{stem}.gz" for stem in IDX_FILES.values())
        + ") in the manual dir to skip the download."
    )

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls) -> dict[str, tfds.core.download.checksums.UrlInfo]:
        """Upstream sizes and sha256 of every config's files (read live, not memoized)."""
        infos = {}
        for spec in IDX_DATASETS.values():
            for key, (size, sha256) in spec.checksums.items():
                infos[spec.file_url(key)] = tfds.core.download.checksums.UrlInfo(
                    size=tfds.core.utils.Size(size),
                    checksum=sha256,
                    filename=IDX_FILES[key] + ".gz",
                )
        return infos

    def _info(self) -> tfds.core.DatasetInfo:
        spec = IDX_DATASETS[self.builder_config.name]
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{spec.title}: {spec.shape} uint8 images, {len(spec.class_names)} classes.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=spec.shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "label": tfds.features.ClassLabel(names=list(spec.class_names)),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=spec.homepage,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        spec = IDX_DATASETS[self.builder_config.name]
        try:
            files = find_idx_files(dl_manager.manual_dir)
        except AssertionError:  # no manual dir, or an empty one
            files = {}
        if len(files) < len(IDX_FILES):
            urls = {key: spec.file_url(key) for key in IDX_FILES}
            files = {k: Path(p) for k, p in dl_manager.download(urls).items()}
        return {
            split: self._generate_examples(files[f"{split}_images"], files[f"{split}_labels"])
            for split in ("train", "test")
        }

    def _generate_examples(self, images: Path, labels: Path):
        x, y = read_idx_split(images, labels, IDX_DATASETS[self.builder_config.name])
        for i in range(len(y)):
            yield i, {"image": x[i], "label": int(y[i]), "index": i}


def read_split(builder: IdxImages, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All records of a prepared split via tfds data_source, back in IDX-file order."""
    source = builder.as_data_source(split=split)
    records = source.__getitems__(list(range(len(source)))) if len(source) else []
    spec = IDX_DATASETS[builder.builder_config.name]
    if not records:
        return np.zeros((0, *spec.shape), np.uint8), np.zeros((0,), np.int64)
    order = np.argsort([r["index"] for r in records], kind="stable")
    x = np.stack([records[i]["image"] for i in order]).astype(np.uint8)
    y = np.asarray([records[i]["label"] for i in order], np.int64)
    return x, y


def prepare_and_read(name: str, data_dir: Path, manual_dir: Path | None) -> dict[str, np.ndarray]:
    """Prepare `name` under `data_dir` (from `manual_dir`, or by download) and read it back.

    Returns train_x/train_y/test_x/test_y (uint8 NHWC images, int64 labels) in file order.
    """
    if manual_dir is None:  # TFDS's convention, per config; we already know it is incomplete
        manual_dir = data_dir / "downloads" / "manual" / name
    with quiet_tfds():
        builder = IdxImages(config=name, data_dir=str(data_dir), file_format="array_record")
        config = tfds.download.DownloadConfig(
            manual_dir=str(manual_dir),
            try_download_gcs=False,
            force_checksums_validation=True,
        )
        builder.download_and_prepare(download_config=config)
        train_x, train_y = read_split(builder, "train")
        test_x, test_y = read_split(builder, "test")
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
