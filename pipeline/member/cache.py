"""The prediction cache: where a member's predictions per split and TTA policy are kept, and how they are named.

Each file is ``<split>-<policy key>-<settings key>-<checkpoint hash>.csv`` (a prediction file) plus a
``.json`` sidecar (rows, timings, device, precision). The policy key hashes the member's resolved TTA
policy (crop size included), the settings key everything else that changes the numbers (eval transform
and input channels, image source, view reduction, device type, precision, memory format, compile), and
the checkpoint hash the weights file's bytes: a file is reused only for exactly the same computation.
The split tag of the test set covers its images' contents and ids (:func:`pipeline.data.fingerprint.split_tag`).

A cached file is untrusted until checked (:func:`cache_problem`): its sidecar records the SHA-256 of its
bytes, and it must hold finite probabilities in [0, 1] whose rows sum to one, for exactly the expected
ids. A file that fails is not used: it is recomputed, and the log names it and says why.

Where the files are (:func:`cache_dirs`):

- written to ``predict.prediction_cache_dir/<member>/`` when the user names one; otherwise to the member's
  own ``predictions/`` folder when it is writable; otherwise (a read-only Kaggle input data set) to
  ``<predict_dir>/prediction_cache/<member>/``;
- read from all three, in that order, so the predictions an export ships in ``predictions/`` are found.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import MemberError, PipelineError
from pipeline.core.io import read_json, short_hash
from pipeline.member.folder import Member, inside
from pipeline.member.predictions import read_predictions

__all__ = [
    "PREDICTIONS", "FALLBACK", "CHECKSUM", "CacheDirs", "cache_dirs", "cache_name", "checkpoint_hash", "file_checksum",
    "cache_problem", "writable", "find_cached", "oof_files", "rekey",
]

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
"""The member folder's own cache folder."""

FALLBACK = "prediction_cache"
"""The cache folder inside the predict folder, for members whose folder is read-only."""


CHECKSUM = "sha256"
"""The sidecar field that holds the SHA-256 of its prediction file's bytes."""


def file_checksum(path: Path) -> str:
    """SHA-256 of a file's bytes (64 hex digits), as a prediction file's sidecar records it."""
    return short_hash(Path(path), 64)


def cache_problem(path: Path, classes: Sequence[str], ids: Collection[str] | None = None) -> str | None:
    """Why the cached prediction file ``path`` cannot be used (None: it can).

    Checked: its sidecar's checksum and row count, its classes, finite probabilities in [0, 1] with rows
    summing to one, unique ids and, when ``ids`` is given, exactly those ids.
    """
    try:
        side = read_json(path.with_suffix(".json"))
    except (OSError, ValueError) as err:
        return f"its sidecar cannot be read ({err})"
    recorded = side.get(CHECKSUM) if isinstance(side, dict) else None
    if not isinstance(recorded, str):
        return f"its sidecar {path.with_suffix('.json').name} records no checksum (written by an older version?)"
    if file_checksum(path) != recorded:
        return "its contents do not match the checksum its sidecar records (the file was changed)"
    try:
        got, probs, _ = read_predictions(path, classes, sums=True)
    except (PipelineError, ValueError, KeyError) as err:
        return str(err).removeprefix(f"{path}: ")
    if side.get("rows") != len(got):
        return f"it has {len(got)} rows but its sidecar records {side.get('rows')}"
    if len(set(got)) != len(got):
        return "it repeats ids"
    if ids is not None and (len(got) != len(ids) or set(got) != set(ids)):
        return f"its ids are not the {len(ids)} ids of the images to predict ({len(got)} rows)"
    return None


def checkpoint_hash(member: Member) -> str:
    """Hash of the weights file's bytes (12 hex digits): the last part of every cache file name."""
    return short_hash(member.checkpoint, 12)


def cache_name(split: str, policy_key: str, settings_key: str, ckpt_hash: str) -> str:
    """``<split>-<policy key>-<settings key>-<checkpoint hash>.csv``; the checkpoint hash is always last."""
    return f"{split}-{policy_key}-{settings_key}-{ckpt_hash}.csv"


def rekey(name: str, ckpt_hash: str) -> str:
    """A cache file name with its checkpoint hash replaced (an export's weights file has other bytes)."""
    stem, _, rest = name.rpartition("-")
    suffix = rest[rest.index("."):] if "." in rest else ""
    return f"{stem}-{ckpt_hash}{suffix}"


def writable(folder: Path) -> bool:
    """True when a file can be created in ``folder`` (created if missing); probed, since permissions lie for root."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class CacheDirs:
    """Where one member's cached predictions are looked up (in order) and where new ones are written."""

    read: tuple[Path, ...]
    write: Path


def cache_dirs(member: Member, user_dir: str | Path | None, fallback_root: str | Path | None) -> CacheDirs:
    """The member's cache folders (see the module docstring).

    Args:
        member: The member.
        user_dir: ``predict.prediction_cache_dir``, or None.
        fallback_root: The predict folder (its ``prediction_cache/`` is used when the member folder is
            read-only); None uses the system temporary folder.

    Raises:
        MemberError: The member's ``predictions/`` is a symlink leading outside its folder.
        OSError: ``user_dir`` cannot be written to (the user asked for it, so this is not worked around).
    """
    own = inside(member.path, PREDICTIONS, "cache folder")
    root = Path(fallback_root) if fallback_root is not None else Path(tempfile.gettempdir()) / "pipeline"
    fallback = root / FALLBACK / member.name
    if user_dir is not None:
        chosen = Path(user_dir).expanduser() / member.name
        if not writable(chosen):
            raise OSError(f"prediction_cache_dir {user_dir}: cannot write to {chosen}; choose a writable folder.")
        return CacheDirs((chosen, own, fallback), chosen)
    if writable(own):
        return CacheDirs((own, fallback), own)
    log.info("Member folder %s is read-only; caching its predictions in %s", member.path, fallback)
    if not writable(fallback):
        raise OSError(f"Cannot write predictions of member {member.name} to {own} or {fallback}; set prediction_cache_dir.")
    return CacheDirs((own, fallback), fallback)


def find_cached(member: Member, dirs: CacheDirs, name: str, ids: Collection[str] | None = None,
                instead: str = "ignoring it") -> Path | None:
    """The first usable cached file called ``name`` (with its ``.json`` sidecar), or None.

    A file inside the member folder must resolve inside it: a symlinked cache file is untrusted input too.
    A file that fails :func:`cache_problem` (for ``ids``, when given) is skipped with a log line saying why
    and what happens ``instead``.
    """
    for folder in dirs.read:
        path = folder / name
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            continue
        if path.is_relative_to(member.path):
            try:
                inside(member.path, path.relative_to(member.path), "cached prediction file")
            except MemberError as err:
                log.warning("Ignoring %s", err)
                continue
        problem = cache_problem(path, member.manifest.classes, ids)
        if problem is not None:
            log.warning("Not using cached predictions %s: %s; %s.", path, problem, instead)
            continue
        return path
    return None


def oof_files(member: Member, dirs: CacheDirs, ckpt_hash: str) -> list[Path]:
    """Cached out-of-fold (``val-*``) prediction files of the member's current weights, first folder first."""
    seen: dict[str, Path] = {}
    for folder in dirs.read:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"val-*-{ckpt_hash}.csv")):
            if path.name not in seen and find_cached(member, CacheDirs((folder,), folder), path.name) is not None:
                seen[path.name] = path
    return list(seen.values())
