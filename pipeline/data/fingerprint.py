"""Content fingerprints of image tables: what a prediction cache key says about the images it predicted.

A key built from file names trusts them: images replaced under the same names would get the old
predictions, and a data folder moved elsewhere would get none. :func:`table_fingerprint` hashes every
image's bytes, in table order, with its id (never its path), so the key follows the contents wherever
the folder lies.

Re-runs stay cheap: a record of each file's size, ``mtime_ns`` and hash (:data:`HASHES_FILE`, kept in the
predict folder) lets a file whose size and mtime are unchanged go unread. Anything that rewrites a file
changes its mtime; a copy that keeps mtimes (``cp -p``, ``rsync -a``) under another path is hashed again,
since the record is keyed by absolute path. A damaged or foreign record is ignored: it only saves time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.core.io import read_json, short_hash, write_json
from pipeline.data.tables import ImageTable

__all__ = ["HASHES_FILE", "file_digest", "table_fingerprint", "split_tag"]

log = logging.getLogger(__name__)

HASHES_FILE = "image_hashes.json"
"""The record of image hashes by path, size and mtime, in the predict folder."""


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (32 hex digits)."""
    return short_hash(Path(path), 32)


def _load_record(record: Path | None) -> dict[str, Any]:
    if record is None or not record.is_file():
        return {}
    try:
        data = read_json(record)
    except (OSError, ValueError) as err:
        log.info("Ignoring the image hash record %s (%s); hashing every image again", record, err)
        return {}
    return data if isinstance(data, dict) else {}


def _known(entry: Any, st: os.stat_result) -> str | None:
    """The recorded hash when the entry is well formed and its size and mtime are the file's."""
    if (isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]
            and isinstance(entry[2], str) and len(entry[2]) == 32):
        return entry[2]
    return None


def table_fingerprint(table: ImageTable, record_dir: str | Path | None = None) -> str:
    """Hash of the table's ids and its images' contents, in table order (16 hex digits).

    Args:
        table: The images.
        record_dir: The folder (the predict folder) whose hash record (:data:`HASHES_FILE`) is read and
            updated; None hashes every file.

    >>> table_fingerprint(ImageTable(["a"], [Path("a.png")]))  # doctest: +SKIP
    '5f0c…'
    """
    record = Path(record_dir) / HASHES_FILE if record_dir is not None else None
    known = _load_record(record)
    fresh: dict[str, list[Any]] = {}
    lines = []
    hashed = 0
    for image_id, path in zip(table.ids, table.paths):
        st = os.stat(path)
        name = str(Path(path).absolute())
        digest = _known(known.get(name), st)
        if digest is None:
            digest, hashed = file_digest(path), hashed + 1
        fresh[name] = [st.st_size, st.st_mtime_ns, digest]
        lines.append(f"{image_id}\t{digest}")
    if hashed:
        log.info("Hashed %d of %d image(s) for the prediction cache key", hashed, len(table))
    if record is not None and hashed:
        write_json(record, {**known, **fresh})
    return short_hash("\n".join(lines), 16)


def split_tag(split: str, table: ImageTable, record_dir: str | Path | None = None) -> str:
    """The prediction cache's tag of ``table``: ``<split>-<fingerprint>`` (e.g. ``test-3f…``)."""
    return f"{split}-{table_fingerprint(table, record_dir)[:10]}"
