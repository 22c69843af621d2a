"""A folder of images, one subfolder per class (``data=image_folder data.path=DIR``),
laid out as TFDS's ``ImageFolder`` expects::

    DIR/train/<class>/*.png     DIR/test/<class>/*.png

Read with Pillow, no TensorFlow. Classes are the subfolder names of both splits,
sorted (a class may be missing from one split); files are read in sorted order.
Images are PNG, JPEG, BMP, GIF, WebP or TIFF, all of one size and one channel count:
grey (``L``) gives 1 channel, ``RGB`` 3, ``RGBA`` 4; 1-bit images become grey and
palette or other colour modes RGB (RGBA where they carry transparency). Hidden files
and files with other extensions are skipped; an image outside a class folder, a
split with no images, an unreadable file or an odd size is a one-line error naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnlab.data.arrays import raw_from_splits
from bnlab.data.dataset import DataError, Raw, one_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_dirs(split_dir: Path) -> list[Path]:
    """The class folders of one split; an image lying loose in the split is an error."""
    for f in sorted(split_dir.iterdir()):
        if f.is_file() and _visible(f) and f.suffix.lower() in IMAGE_SUFFIXES:
            raise DataError(
                f"{f} is not in a class folder: put each image in "
                f"{split_dir}/<class>/ (one subfolder per class)"
            )
    return [d for d in sorted(split_dir.iterdir()) if d.is_dir() and _visible(d)]


def _image_files(class_dir: Path) -> list[Path]:
    return [
        f
        for f in sorted(class_dir.iterdir())
        if f.is_file() and _visible(f) and f.suffix.lower() in IMAGE_SUFFIXES
    ]


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 (H, W, C), in the channel rule of the module docstring."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "1":
                im = im.convert("L")
            elif mode not in _CHANNELS:
                if mode.startswith(("I", "F")):
                    raise DataError(
                        f"{path} is a {mode} image (16-bit or float): save 8-bit grey or "
                        "RGB images, or convert the folder to data=arrays"
                    )
                alpha = "A" in mode or "transparency" in im.info
                im = im.convert("RGBA" if alpha else "RGB")
            x = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({one_line(e)}): replace or remove it") from None
    return x[..., None] if x.ndim == 2 else x


def _describe(shape: tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{h}x{w} with {c} channel{'s' if c > 1 else ''}"


def load_image_folder(path: str) -> Raw:
    """``data=image_folder data.path=DIR``: uint8 images and labels from the class folders."""
    root = Path(path).expanduser().absolute()
    layout = "DIR/train/<class>/*.png and DIR/test/<class>/*.png"
    if not root.is_dir():
        raise DataError(
            f"data.path={root} is not a folder: point it at a folder laid out as {layout}"
        )
    classes: dict[str, list[Path]] = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"data.path={root} has no {split}/ folder: lay it out as {layout}")
        classes[split] = _class_dirs(root / split)
    names = sorted({d.name for dirs in classes.values() for d in dirs})
    label = {n: i for i, n in enumerate(names)}

    arrays: dict[str, np.ndarray] = {}
    first: tuple[Path, tuple[int, ...]] | None = None
    for split in ("train", "test"):
        images, labels = [], []
        for d in classes[split]:
            for f in _image_files(d):
                x = _read_image(f)
                if first is None:
                    first = (f, x.shape)
                elif x.shape != first[1]:
                    raise DataError(
                        f"{f} is {_describe(x.shape)} but {first[0]} is {_describe(first[1])}: "
                        "all images must share one size and channel count (resize or convert them)"
                    )
                images.append(x)
                labels.append(label[d.name])
        if not images:
            raise DataError(
                f"data.path={root}: {split}/ holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"in class folders: lay it out as {layout}"
            )
        arrays[f"x_{split}"] = np.stack(images)
        arrays[f"y_{split}"] = np.asarray(labels, np.int64)
    return raw_from_splits(
        arrays,
        where=f"data.path={root}",
        source=f"{root} (data=image_folder, {len(names)} classes)",
        class_names=names,
    )
