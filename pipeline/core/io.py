"""File I/O every stage shares: atomic writes, JSON, CSV read as text, short hashes, safe names.

One rule for writing files: write to a temporary file beside the target, then rename it into place
(:class:`AtomicFile`). Readers see the old file or the complete new one, never half a file, and a
failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["AtomicFile", "atomic_path", "write_json", "read_json", "read_csv_as_text", "safe_name", "short_hash"]


class AtomicFile:
    """A temporary file beside ``path`` that replaces ``path`` on :meth:`commit`.

    >>> f = AtomicFile("out.csv")  # doctest: +SKIP
    >>> f.tmp.write_text("id,label\\n"); f.commit()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)

    def commit(self) -> Path:
        """Rename the temporary file onto ``path``."""
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (a no-op after :meth:`commit`)."""
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    >>> with atomic_path("out.csv") as tmp:
    ...     tmp.write_text("id,label\\n")  # doctest: +SKIP
    """
    target = AtomicFile(path)
    try:
        yield target.tmp
        target.commit()
    finally:
        target.abort()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; the error names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def read_csv_as_text(path: str | Path) -> Any:
    """Read a CSV with every cell as text, so ids keep leading zeros and ``"NA"`` stays a string.

    Raises:
        ValueError: The file is empty; the message names it.
    """
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: file is empty, expected a CSV with a header row") from err


def safe_name(text: str) -> str:
    """Turn a model name such as ``hf-hub:org/model`` into a file-system-safe token."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def short_hash(value: Any, length: int = 16) -> str:
    """Hex prefix of a SHA-256: of a file's bytes (a ``Path``), of text (a ``str``, UTF-8), of ``bytes``,
    or of any JSON-able value (keys sorted, so equal values hash equally).

    >>> short_hash("abc", 8)
    'ba7816bf'
    """
    digest = hashlib.sha256()
    if isinstance(value, Path):
        with open(value, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    elif isinstance(value, bytes):
        digest.update(value)
    elif isinstance(value, str):
        digest.update(value.encode())
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:length]
