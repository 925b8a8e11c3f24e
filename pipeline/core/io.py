"""File I/O every stage shares: atomic writes, stale temporary files, JSON, CSV read as text, hashes, safe names.

One rule for writing files: write to a temporary file beside the target, then rename it into place
(:class:`AtomicFile`). Readers see the old file or the complete new one, never half a file, and a
failure leaves nothing behind. A process killed while writing leaves its temporary file; the next run
removes it with :func:`clean_stale_temps`, which can tell a dead writer's file from a live one's
because every temporary name carries its writer's host and process id.

One rule for reading tables: :func:`read_csv_as_text` (every cell as text, UTF-8, and an error that
names the file and says what was expected).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import DataError, OutputError, duplicates

__all__ = [
    "AtomicFile", "atomic_path", "write_json", "read_json", "read_csv_as_text", "safe_name", "short_hash",
    "clean_stale_temps", "ensure_writable_dir", "check_writable_dir", "STALE_TEMP_AGE_S", "DISK_FULL", "disk_full_error",
]

log = logging.getLogger(__name__)

STALE_TEMP_AGE_S = 24 * 3600.0
"""Age after which a temporary file whose writer cannot be checked (another host) counts as stale."""

# .<target name>.<host tag>.<pid>.<8 hex>.tmp; the host tag has no dots, so the name parses from the right.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp$")
# Earlier versions used tempfile.mkstemp: .<target name>.<8 random characters>.tmp, no writer recorded.
_OLD_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _host_tag() -> str:
    """This host, plus its PID namespace where there is one: a pid means the same process only within it.

    Two containers on one shared disk may report the same host name; their PID namespaces differ.
    """
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    try:
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        namespace = ""
    return f"{host}_{namespace}" if namespace else host


_HOST = _host_tag()


def _new_temp(path: Path) -> Path:
    """Create an empty temporary file beside ``path`` (mode 0666 less the umask, as ``open`` would)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _cannot_write(path: Path, err: OSError) -> OutputError:
    return OutputError(f"Cannot write {path}: {err.strerror or err} ({err.filename or path}).", path)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""Write errors that mean no space is left: the disk is full (ENOSPC) or the user's quota is used up (EDQUOT)."""


def disk_full_error(path: str | Path, err: OSError, removed: bool = True) -> OutputError:
    """The one-line error for writing ``path`` onto a full disk (``err.errno`` in :data:`DISK_FULL`); ``removed``:
    the message says that the partial file was removed (this package's writers always do).

    >>> str(disk_full_error("out/a.csv", OSError(errno.ENOSPC, "No space left on device")))[:41]
    'Cannot write out/a.csv: disk full (ENOSPC'
    """
    path = Path(path)
    code = err.errno or errno.ENOSPC
    what = "disk full" if code == errno.ENOSPC else "disk quota exceeded"
    return OutputError(
        f"Cannot write {path}: {what} ({errno.errorcode[code]}: {err.strerror or os.strerror(code)}). "
        f"Free space on the disk that holds {path.parent} (or write to another disk) and run the command again"
        f"{'; the partial file was removed' if removed else ''}.", path.parent
    )


class AtomicFile:
    """A temporary file beside ``path`` that replaces ``path`` on :meth:`commit`.

    The temporary file is created with mode ``0666 & ~umask`` (``tempfile.mkstemp`` would make it 0600,
    and the renamed file would then be unreadable to a teammate) and is named
    ``.<name>.<host>.<pid>.<random>.tmp`` so :func:`clean_stale_temps` can tell whether its writer lives.

    Raises:
        OutputError: the folder cannot be created or written (the message names it).

    >>> f = AtomicFile("out.csv")  # doctest: +SKIP
    >>> f.tmp.write_text("id,label\\n"); f.commit()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = _new_temp(self.path)
            self.mode = stat.S_IMODE(self.tmp.stat().st_mode)  # 0666 less the umask, as the OS applied it
        except OSError as err:
            if err.errno in DISK_FULL:
                raise disk_full_error(self.path, err) from err
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise _cannot_write(self.path.parent, err) from err

    def commit(self) -> Path:
        """Rename the temporary file onto ``path`` (with the umask's mode, even if a writer recreated it 0600)."""
        if stat.S_IMODE(self.tmp.stat().st_mode) != self.mode:  # safetensors, for one, writes its own 0600 file
            os.chmod(self.tmp, self.mode)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (a no-op after :meth:`commit`); never raises, so it cannot hide the first error."""
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError as err:  # left for clean_stale_temps: its name holds this process's pid
            log.warning("Could not remove the temporary file %s: %s", self.tmp, err)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds, else remove it
    (a full disk is then an :class:`~pipeline.core.errors.OutputError` naming ``path``: :func:`disk_full_error`).

    >>> with atomic_path("out.csv") as tmp:
    ...     tmp.write_text("id,label\\n")  # doctest: +SKIP
    """
    target = AtomicFile(path)
    try:
        yield target.tmp
        target.commit()
    except OSError as err:
        if err.errno in DISK_FULL:
            raise disk_full_error(target.path, err) from err
        raise
    finally:
        target.abort()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(path: Path, max_age: float, now: float) -> bool:
    """Whether ``path`` is a temporary file its writer will never rename (see :func:`clean_stale_temps`)."""
    match = _TEMP.match(path.name)
    if match is None and not _OLD_TEMP.match(path.name):
        return False
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:  # renamed or removed meanwhile
        return False
    if match is not None and match["host"] == _HOST:
        return not _pid_alive(int(match["pid"]))
    return age > max_age


def clean_stale_temps(folder: str | Path, recursive: bool = False, max_age: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``; return the removed paths.

    A temporary file written on this host (and PID namespace) is removed when its writer's process no
    longer exists, however new it is, so a run killed a second ago is cleaned up at once; one whose
    writer still runs is kept, so concurrent writers are never disturbed. Files from other hosts
    (a shared disk) and unnamed temporary files from earlier versions are removed only when older than
    ``max_age`` seconds (a day by default), since their writer cannot be checked.

    Args:
        folder: where to look; a missing folder has nothing to clean.
        recursive: also look in every sub-folder.
        max_age: seconds after which an uncheckable temporary file counts as stale.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for path in sorted(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        if path.is_file() and _is_stale(path, max_age, now):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    if removed:
        log.info("Removed %d temporary file(s) left by killed runs in %s", len(removed), folder)
    return removed


def _writable(path: Path) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(path, os.W_OK | os.X_OK, effective_ids=effective)


def check_writable_dir(path: str | Path, key: str | None = None) -> None:
    """Check, without creating anything, that folder ``path`` can be written or created by this process.

    Raises:
        OutputError: naming the folder, the existing part of it that blocks it, and ``key``.
    """
    path = Path(path).absolute()
    where = f" (set by {key})" if key else ""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise OutputError(f"Cannot use {path} as an output folder{where}: {existing} is a file, not a folder.", path)
    if not _writable(existing):
        blocked = "it" if existing == path else f"its parent {existing}"
        raise OutputError(
            f"Cannot write to the output folder {path}{where}: {blocked} is not writable (permission denied or "
            f"a read-only file system). Choose a folder you can write to{f' with {key}=...' if key else ''}, or fix "
            "its permissions.", path
        )


def ensure_writable_dir(path: str | Path, key: str | None = None) -> Path:
    """Create folder ``path`` if needed and check that this process can write into it.

    Args:
        path: the folder.
        key: the setting that chose the folder (``paths.output_root``, ``predict_dir``…), named in the error.

    Raises:
        OutputError: naming the folder (or the first parent that could not be created) and ``key``.
    """
    path = Path(path)
    where = f" (set by {key})" if key else ""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise OutputError(f"Cannot use {path} as an output folder{where}: a file of that name exists.", path) from err
    except OSError as err:
        blocked = Path(err.filename) if err.filename else path
        raise OutputError(
            f"Cannot create the output folder {path}{where}: {err.strerror or err} ({blocked}). "
            f"Choose a folder you can write to{f' with {key}=...' if key else ''}.", path
        ) from err
    if not _writable(path):
        raise OutputError(
            f"Cannot write into the output folder {path}{where}: permission denied or a read-only file system. "
            f"Choose a folder you can write to{f' with {key}=...' if key else ''}, or fix its permissions.", path
        )
    return path


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


def _utf8_problem(path: Path) -> str:
    """Where a file stops being UTF-8: the byte, its line and column, for the error message."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        return f"byte 0x{raw[err.start]:02x} at line {line}, column {column}"
    return "an invalid byte"


def read_csv_as_text(
    path: str | Path, *, key: str | None = None, require_rows: bool = False, what: str = "CSV file",
    numeric_prefix: str | None = None, chunk_rows: int | None = None,
) -> Any:
    """Read a CSV with every cell as text, so ids keep leading zeros and ``"NA"`` stays a string.

    The one CSV-reading rule of the project: UTF-8 (a byte-order mark is fine), a header row, and as
    many fields per row as the header has (a short row's missing cells read as ``""``).

    Args:
        path: the file.
        key: the config key that names the file, for the error messages.
        require_rows: refuse a file with a header but no rows.
        what: how the messages call the file (``"Sample submission"``…).
        numeric_prefix: columns whose names start with it (a prediction file's ``p:<class>``) are read as
            float64 (an empty cell or ``nan`` is NaN); every other column stays text.
        chunk_rows: return an iterator of frames of this many rows instead of one frame.

    Raises:
        DataError: naming the file (and ``key``): it is missing, empty, header-only (with
            ``require_rows``), not UTF-8 (with the offending byte's line and how to convert it), or has
            a row with more fields than the header.
    """
    import pandas as pd

    path = Path(path)
    where = f" (config key {key})" if key else ""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist{where}.")
    dtype: Any = str
    na_values: Any = None
    if numeric_prefix is not None:
        numeric = [c for c in _header(path) if c.startswith(numeric_prefix)]
        dtype = defaultdict(lambda: str, dict.fromkeys(numeric, "float64"))
        na_values = dict.fromkeys(numeric, ["", "nan", "NaN"])
    try:
        df = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=na_values, encoding="utf-8",
                         chunksize=chunk_rows)
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}{where}: the file is empty; expected a CSV with a header row.") from err
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}{where}: not UTF-8 text ({_utf8_problem(path)}). It is probably Latin-1 / Windows-1252, as "
            "Excel and older tools save it. Convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` "
            "or `pandas.read_csv(path, encoding='latin-1').to_csv(path, index=False)`."
        ) from err
    except pd.errors.ParserError as err:
        detail = str(err).strip().removeprefix("Error tokenizing data. C error: ")
        raise DataError(
            f"{path}{where}: malformed CSV row ({detail}). Every row needs as many fields as the header "
            f"({_header_width(path)}); quote values that contain commas."
        ) from err
    except ValueError as err:  # a numeric column holding text
        raise DataError(f"{path}{where}: a {numeric_prefix}... column holds a value that is not a number ({err}).") from err
    if repeated := duplicates(_header(path)):
        raise DataError(f"{path}{where}: the header names {repeated} more than once (pandas would read the second as "
                        f"'{repeated[0]}.1' and silently use the first). Rename or remove the repeated column.")
    if chunk_rows is not None:
        return _checked_chunks(df, path, where, numeric_prefix)
    if require_rows and df.empty:
        raise DataError(f"{path}{where}: has a header ({list(df.columns)}) but no rows.")
    return df


def _checked_chunks(reader: Any, path: Path, where: str, numeric_prefix: str | None) -> Iterator[Any]:
    """The frames of a chunked read; a numeric column's text is named as in a whole read."""
    try:
        yield from reader
    except ValueError as err:
        raise DataError(f"{path}{where}: a {numeric_prefix}... column holds a value that is not a number ({err}).") from err


def _header(path: Path) -> list[str]:
    """The header row's names as written (pandas renames a repeated name ``x.1``); none for an empty or
    undecodable file (pandas then names the problem)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return []


def _header_width(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return f"{len(next(csv.reader(fh)))} here"
    except (OSError, UnicodeDecodeError, StopIteration):
        return "see its first line"


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
