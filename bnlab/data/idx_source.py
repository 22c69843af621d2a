"""IDX datasets into memory: from ``data.dir``, the prepared cache, a standard local
folder, or a checksummed download, in that order.

The first load prepares the dataset with the TFDS builder in :mod:`bnlab.data.idx_builder`
(array_record records) and keeps the TFDS data under
``<data_dir>/idx_images/<name>/<version>/`` plus ``bnlab-arrays.npz`` beside it: reading
70k records back through ``tfds.data_source`` takes ~3 s, the npz < 0.2 s, so later
loads read the npz alone. A changed ``data.dir`` is noticed (names, sizes, mtimes) and
prepared afresh; a file lock lets parallel runs prepare a dataset once. When nothing is
local and the download host cannot be reached, loading stops with a one-line
:class:`DataError` within a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.data import network
from bnlab.data.dataset import DataError, Raw, default_data_dir, one_line
from bnlab.data.idx import (
    BUILDER_NAME,
    BUILDER_VERSION,
    IDX_FILES,
    IdxSpec,
    find_idx_files,
    read_idx_split,
)
from bnlab.errors import say

CACHE_FILE = "bnlab-arrays.npz"
_CACHE_FORMAT = 1


def _fingerprint(files: dict[str, Path]) -> dict[str, list[Any]]:
    """Names, sizes and mtimes of the source files, to notice when data.dir changed."""
    out = {}
    for key, p in sorted(files.items()):
        st = p.stat()
        out[key] = [p.name, st.st_size, st.st_mtime_ns]
    return out


def _read_cache(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The npz cache and its origin record, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != _CACHE_FORMAT:
                return None
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            origin = json.loads(str(z["origin"]))
    except (OSError, KeyError, ValueError):
        return None
    return arrays, origin


def _write_cache(path: Path, arrays: dict[str, np.ndarray], origin: dict[str, Any]) -> None:
    """Write the npz cache atomically (temp file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bnlab-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=_CACHE_FORMAT, origin=np.array(json.dumps(origin)), **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the cache is shareable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so parallel runs (sweeps) prepare a dataset once."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # closed by the `with f` below
    except (ImportError, OSError):  # not POSIX, or a read-only data_dir: go on unlocked
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _raw_from_arrays(spec: IdxSpec, arrays: dict[str, np.ndarray], source: str) -> Raw:
    return Raw(
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        num_classes=len(spec.class_names),
        class_names=spec.class_names,
        pixel_max=255.0,
        source=source,
    )


def _origin_text(origin: dict[str, Any]) -> str:
    return origin.get("path") or origin.get("kind", "unknown source")


def _cached(spec: IdxSpec, cache: Path) -> Raw | None:
    """The dataset from its prepared npz cache (the source says what it is a cache of),
    or None when there is no readable cache."""
    hit = _read_cache(cache)
    if hit is None:
        return None
    return _raw_from_arrays(spec, hit[0], f"{cache.parent} (cache of {_origin_text(hit[1])})")


def load_idx(spec: IdxSpec, dir: str | None, data_dir: str | None, download: bool) -> Raw:
    """Find, prepare (once) and return an IDX dataset; see the module docstring for the order."""
    root = default_data_dir(data_dir)
    version_dir = root / BUILDER_NAME / spec.name / BUILDER_VERSION
    cache = version_dir / CACHE_FILE
    lock = root / BUILDER_NAME / spec.name / ".bnlab.lock"

    if dir is not None:
        src = Path(dir).expanduser().absolute()
        if not src.is_dir():
            raise DataError(
                f"data.dir={src} is not a folder: point it at the folder with the four "
                f"{spec.title} IDX files, or set data.dir=null"
            )
        files = find_idx_files(src)
        if len(files) < len(IDX_FILES):
            missing = ", ".join(IDX_FILES[k] + ".gz" for k in IDX_FILES if k not in files)
            raise DataError(
                f"data.dir={src} lacks {spec.title} IDX files ({missing}): point data.dir "
                "at the folder holding all four, or set data.dir=null to use the cache, "
                "standard locations or a download"
            )
        origin = {"kind": "dir", "path": str(src), "files": _fingerprint(files)}
        with _file_lock(lock):
            hit = _read_cache(cache)
            same = hit is not None and all(hit[1].get(k) == origin[k] for k in ("path", "files"))
            if same:
                return _raw_from_arrays(spec, hit[0], f"{version_dir} (cache of {src})")
            # Different or changed source: rebuild from data.dir.
            shutil.rmtree(version_dir, ignore_errors=True)
            return _prepare_idx(spec, root, src, origin, files)

    if (raw := _cached(spec, cache)) is not None:
        return raw

    with _file_lock(lock):
        if (raw := _cached(spec, cache)) is not None:  # another process prepared it meanwhile
            return raw
        if (version_dir / "dataset_info.json").is_file():
            origin = {"kind": "tfds", "path": "existing TFDS records"}
            return _prepare_idx(spec, root, None, origin, None)

        manual = root / "downloads" / "manual" / spec.name
        looked = [str(version_dir), *spec.local_dirs, str(manual)]
        for d in (*spec.local_dirs, str(manual)):
            files = find_idx_files(d)
            if len(files) == len(IDX_FILES):
                origin = {"kind": "local", "path": str(Path(d)), "files": _fingerprint(files)}
                return _prepare_idx(spec, root, Path(d), origin, files)

        fixes = []
        if spec.debian_package:
            fixes.append(f"install the Debian package (sudo apt-get install {spec.debian_package})")
        fixes += [
            f"set data.dir=DIR to a folder with the four {spec.title} IDX .gz files",
            "or use data=digits (bundled, always works)",
        ]
        where = f"{spec.title} not found locally (looked in {', '.join(looked)})"
        if not download:
            raise DataError(f"{where} and data.download=false: {'; '.join(fixes)}")
        problem = network.unreachable(spec.url)
        if problem:
            raise DataError(f"{where} and cannot download ({problem}): {'; '.join(fixes)}")
        origin = {"kind": "downloaded", "path": f"a download of {spec.url}"}
        return _prepare_idx(spec, root, None, origin, None, fixes=fixes)


def _prepare_idx(
    spec: IdxSpec,
    root: Path,
    src: Path | None,
    origin: dict[str, Any],
    files: dict[str, Path] | None,
    fixes: list[str] | None = None,
) -> Raw:
    """Run the TFDS builder (from `src`, or by download when None), read back, write the npz."""
    if files is not None:  # check the files here, so bad input gets our one-line error
        for split in ("train", "test"):
            read_idx_split(files[f"{split}_images"], files[f"{split}_labels"], spec)

    from bnlab.data import idx_builder  # imports TFDS (~1 s); only needed when preparing

    version_dir = root / BUILDER_NAME / spec.name / BUILDER_VERSION
    if not (version_dir / "dataset_info.json").is_file():
        say(
            f"preparing {spec.name} (first time only) from {_origin_text(origin)} into {version_dir}"
        )
    try:
        arrays = idx_builder.prepare_and_read(spec.name, root, src)
        _write_cache(version_dir / CACHE_FILE, arrays, origin)
    except DataError as e:  # TFDS may re-raise ours with its context (a whole example) in front
        raise DataError(one_line(e)) from None
    except PermissionError as e:
        raise DataError(
            f"cannot write the prepared {spec.name} under {root} ({e.strerror}: {e.filename}): "
            "set data.data_dir to a writable folder"
        ) from None
    except Exception as e:  # TFDS download/checksum/IO failures: one line, not a traceback
        if origin.get("kind") != "downloaded":
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        todo = "; ".join(fixes or [])
        raise DataError(
            f"downloading {spec.title} from {spec.url} failed ({type(e).__name__}: {first}): {todo}"
        ) from None
    return _raw_from_arrays(spec, arrays, f"{version_dir} (prepared from {_origin_text(origin)})")
