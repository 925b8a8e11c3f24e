"""Pre-resized image cache: decode and resize every image once, then read ``uint8`` pixels from a memmap.

Competitions ship large images (1024 px JPEGs) that are trained at 128–256 px. Decoding them dominates
an epoch, and every epoch and every predict run decodes them again. With ``data.cache_dir`` set, each
image is decoded, converted to ``data.in_chans`` and resized to ``data.cache_size`` (default
``data.image_size``) once, with the same ``albumentations.Resize`` settings the eval pipeline starts with
(:func:`pipeline.data.augment.resize_settings`: area interpolation when shrinking, or bilinear for members
trained before that rule); :class:`pipeline.data.dataset.ImageDataset` then reads the cached array instead of
the file. With ``cache_size == image_size`` the pipelines' own ``Resize`` is the identity, so a cached epoch
sees bit-for-bit the pixels an uncached one sees.

Layout of ``data.cache_dir``, one pair of files per table::

    <table key>-<content key>.npy    uint8 [N, size, size, in_chans] (np.lib.format, memory-mapped)
    <table key>-<content key>.json   index: ids, absolute paths, size, in_chans, content key

The table key hashes the paths, size, channels and resize settings (bilinear, the default, adds nothing,
so caches built before the setting keep their name); the content key adds every file's size and
mtime. A changed, added or removed file therefore changes the content key and the cache is rebuilt
(the stale pair is deleted). Both files are written to temporary names and renamed into place, the
``.json`` last, so a reader never sees a half-built cache.

>>> cache = open_cache(table, "cache/", size=128, in_chans=3)  # doctest: +SKIP
>>> ImageDataset(table, transform, 3, cache=cache)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pipeline.core.io import DISK_FULL, atomic_path, clean_stale_temps, read_json, short_hash, write_json
from pipeline.core.progress import progress
from pipeline.data.augment import resize_image, resize_settings
from pipeline.data.decode import load_image
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable

__all__ = ["ImageCache", "open_cache", "cache_for_spec", "resize_square"]

log = logging.getLogger(__name__)

_FORMAT = 2  # bump when the layout or the decoding rules change, so old caches are rebuilt rather than misread


def resize_square(image: np.ndarray, size: int, resize: dict[str, Any] | None = None) -> np.ndarray:
    """``H×W×C`` → ``size×size×C`` exactly as a pipeline's first ``albumentations.Resize`` with ``resize`` does it."""
    return resize_image(image, size, resize)


_DEFAULT_RESIZE = resize_settings(None)


def _keys(paths: Sequence[str], size: int, in_chans: int, resize: dict[str, Any]) -> tuple[str, str]:
    """(table key, content key): the content key also covers every file's size and mtime."""
    head_fields: dict[str, Any] = {"format": _FORMAT, "size": size, "in_chans": in_chans, "paths": list(paths)}
    if resize != _DEFAULT_RESIZE:  # bilinear caches keep the name they had before the setting existed
        head_fields["resize"] = resize
    head = json.dumps(head_fields)
    stats = "".join(f"{st.st_size}:{st.st_mtime_ns}\n" for st in map(os.stat, paths))
    return short_hash(head, 12), short_hash(head + stats, 16)


@dataclass
class ImageCache:
    """A built cache: ``array_path`` holds ``[N, size, size, in_chans]`` uint8 rows, one per path.

    The memmap is opened lazily in each process (DataLoader workers included) and is never pickled.
    """

    array_path: Path
    index: dict[str, int]
    size: int
    in_chans: int
    key: str
    _array: np.ndarray | None = field(default=None, repr=False)

    def rows(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Cache rows of ``paths`` (any subset of the cached table, in any order).

        Raises:
            KeyError: naming the first path the cache does not hold.
        """
        try:
            return np.array([self.index[os.path.abspath(p)] for p in paths], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"Image {err.args[0]} is not in the cache {self.array_path}; rebuild it.") from None

    def read(self, row: int) -> np.ndarray:
        """A writable copy of one cached ``size×size×in_chans`` image."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return np.array(self._array[row])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}


class _Decode(Dataset):
    """Decode + channel conversion + resize of one file; run by DataLoader workers while building."""

    def __init__(self, paths: Sequence[str], size: int, in_chans: int, max_pixels: int | None,
                 resize: dict[str, Any]) -> None:
        self.paths, self.size, self.in_chans, self.max_pixels, self.resize = paths, size, in_chans, max_pixels, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, resize_square(load_image(self.paths[i], self.in_chans, self.max_pixels), self.size, self.resize)


def _as_is(item: Any) -> Any:
    """Collate that keeps the numpy image (the default would turn it into a tensor)."""
    return item


def _reserve(path: Path) -> None:
    """Allocate the whole (sparse) memmap file now: on a full disk, writing into a memmap kills the process (SIGBUS);
    here it raises ENOSPC, which :func:`~pipeline.core.io.atomic_path` reports in one line, removing the file."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as err:
            if err.errno in DISK_FULL:
                raise
            # a file system that cannot reserve space: best effort only


def _build(paths: list[str], ids: list[str], stem: Path, size: int, in_chans: int, workers: int,
           max_pixels: int | None, resize: dict[str, Any]) -> None:
    """Fill ``<stem>.npy`` in worker processes; rename it, then the index, into place."""
    start = time.perf_counter()
    loader = DataLoader(_Decode(paths, size, in_chans, max_pixels, resize), batch_size=None, num_workers=workers,
                        collate_fn=_as_is)
    with atomic_path(stem.with_suffix(".npy")) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, in_chans))
        _reserve(tmp)
        for i, image in progress(loader, len(paths), f"Caching {len(paths)} images at {size}×{size}", unit="img"):
            array[i] = image
        array.flush()
        del array
    seconds = time.perf_counter() - start
    write_json(stem.with_suffix(".json"), {
        "format": _FORMAT, "key": stem.name, "size": size, "in_chans": in_chans, "resize": resize, "rows": len(paths),
        "build_seconds": round(seconds, 3), "ids": ids, "paths": paths,
    })
    log.info("Built image cache %s: %d images at %dx%d in %.1f s", stem.with_suffix(".npy"), len(paths), size, size,
             seconds)


def _remove_stale(cache_dir: Path, table_key: str, keep: str) -> None:
    for old in cache_dir.glob(f"{table_key}-*"):
        if not old.name.startswith(keep) and old.suffix in (".npy", ".json"):
            log.info("Removing stale image cache %s", old)
            old.unlink(missing_ok=True)


def open_cache(table: ImageTable, cache_dir: str | Path, size: int, in_chans: int, workers: int = 0,
               resize: dict[str, Any] | None = None) -> ImageCache:
    """The cache of ``table``'s images at ``size``×``size``, built first if missing or stale.

    Args:
        table: the images to cache (build it on the full table; subsets look rows up by path).
        cache_dir: folder holding caches (``data.cache_dir``); created if needed.
        size: side of the cached square images (``data.cache_size``, usually ``data.image_size``).
        in_chans: channels to store, 1 or 3 (``data.in_chans``).
        workers: decoding processes while building (0: decode in this process).
        resize: how to resample, as :func:`pipeline.data.augment.resize_settings` reads it off the pipeline the
            cache feeds (None: albumentations' default, bilinear).

    Returns:
        The opened cache.
    """
    if size < 1:
        raise ValueError(f"data.cache_size must be a positive integer; got {size}")
    paths = [os.path.abspath(p) for p in table.paths]
    folder = Path(cache_dir).expanduser()
    resize = dict(resize) if resize is not None else dict(_DEFAULT_RESIZE)
    table_key, key = _keys(paths, size, in_chans, resize)
    stem = folder / f"{table_key}-{key}"
    if not (stem.with_suffix(".json").is_file() and stem.with_suffix(".npy").is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(folder)  # a half-built cache of a killed or disk-full run
        _build(paths, list(table.ids), stem, size, in_chans, workers, table.max_pixels, resize)
        _remove_stale(folder, table_key, stem.name)
    index = read_json(stem.with_suffix(".json"))
    return ImageCache(stem.with_suffix(".npy"), {p: r for r, p in enumerate(index["paths"])}, size, in_chans, key)


def cache_for_spec(table: ImageTable, spec: DataSpec, resize: dict[str, Any] | None = None) -> ImageCache | None:
    """:func:`open_cache` as the ``data`` config asks: None unless ``data.cache_dir`` is set.

    ``resize``: the eval pipeline's :func:`~pipeline.data.augment.resize_settings` (None: bilinear).
    """
    if not spec.cache_dir:
        return None
    return open_cache(table, spec.cache_dir, spec.cache_size or spec.image_size, spec.in_chans, spec.num_workers,
                      resize)
