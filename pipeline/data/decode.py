"""Decoding: any image file to the RGB ``uint8`` values it means (greyscale, alpha, palette, 16/32-bit, float).

The rules, per Pillow mode:

- ``L``, ``RGB``, ``CMYK``, ``YCbCr``, ``1``…: Pillow's own conversion to RGB.
- ``RGBA``, ``LA``, ``PA``, and ``P``/``L``/``RGB`` with a transparent colour: composited onto black
  (each channel times alpha / 255), so a transparent pixel is black whatever colour it stores.
- 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``) and 32-bit integer ``I``: divided by 257, so
  65535 → 255. An image whose values all lie in 0..255 holds 8-bit data in a wide container (some
  tools save 8-bit scans that way): its values are kept, not darkened 257 times, with one warning per
  process and a count. ``I`` values below 0 or above 65535 have no known scale and are refused.
- Float ``F``: values in 0..1 are scaled by 255, in 0..255 kept, in 0..65535 divided by 257; negative,
  larger or non-finite values are refused.
- Images with more than ``data.max_image_pixels`` pixels (a decompression-bomb guard, by default
  Pillow's own limit) are refused before their pixels are decoded.

Every refusal is a :class:`~pipeline.core.errors.DataError` naming the file; :func:`verify_images`
decodes a whole table once before training (in parallel threads, recorded in the sweep folder so the
same files are not decoded again) and skips such files when ``data.skip_bad_images`` is set.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import read_json, short_hash, write_json
from pipeline.core.progress import progress
from pipeline.data.spec import PIL_MAX_IMAGE_PIXELS
from pipeline.data.tables import ImageTable

__all__ = ["load_rgb", "load_image", "to_channels", "verify_images", "decode_notes"]

log = logging.getLogger(__name__)

# A truncated JPEG must raise, not decode silently as grey: the user asked to hear about bad files.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SKIP_HINT = ("Training images: set data.skip_bad_images=true to skip such files; a test image cannot be skipped (the "
              "submission needs its row), so replace or re-encode it.")

# Wide (16/32-bit) images found holding only 8-bit values, in this process: warned about once, then counted.
_eight_bit_wide = 0
_count_lock = threading.Lock()  # verification decodes in threads

_VERIFY_FORMAT = 1  # bump when the decoding rules change, so earlier verification records no longer count


def decode_notes() -> dict[str, int]:
    """What this process's decoding noticed so far: ``{"eight_bit_in_wide": n}`` (images kept as 8-bit values)."""
    return {"eight_bit_in_wide": _eight_bit_wide}


def _note_eight_bit(path: str | Path, mode: str) -> None:
    global _eight_bit_wide
    with _count_lock:
        _eight_bit_wide += 1
        first = _eight_bit_wide == 1
    if first:
        log.warning(
            "%s is a %s image whose values all lie in 0..255: they are kept as 8-bit values rather than divided "
            "by 257 (the 16-bit range). Further images like it are counted, not listed.", path, mode,
        )


def _check_limit(max_pixels: int | None) -> None:
    """Validate ``data.max_image_pixels`` and keep Pillow's own guard from firing below it."""
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ConfigError(f"data.max_image_pixels={max_pixels!r} must be a positive integer, or null for no limit.")
    current = Image.MAX_IMAGE_PIXELS
    # Pillow refuses images above twice its limit at open(). Ours is checked explicitly below, so Pillow's
    # may only ever be raised to ours (never lowered: other code in the process may rely on it).
    if current is not None and (max_pixels is None or max_pixels > current):
        Image.MAX_IMAGE_PIXELS = max_pixels


def _bomb(path: str | Path, size: tuple[int, int], max_pixels: int | None) -> DataError:
    w, h = size
    return DataError(
        f"Image {path} has {w}×{h} = {w * h:,} pixels, more than data.max_image_pixels={max_pixels:,} (the guard "
        "against decompression bombs). Raise data.max_image_pixels (null: no limit) if the image is genuine. "
        + _SKIP_HINT
    )


def _scale_wide(arr: np.ndarray, mode: str, path: str | Path) -> np.ndarray:
    """16/32-bit integer greyscale → uint8 by the 16-bit range (÷257); 8-bit data in it is kept."""
    lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
    if lo < 0 or hi > 65535:
        raise DataError(
            f"Image {path} is a 32-bit ({mode}) image with values {lo}..{hi}, outside the 16-bit range 0..65535: "
            "their scale is unknown, so it is refused rather than clipped or guessed. Convert such images to "
            f"8 or 16 bits with the scaling you mean. {_SKIP_HINT}"
        )
    if hi <= 255:
        _note_eight_bit(path, mode)
        return arr.astype(np.uint8)
    return np.rint(arr / 257.0).astype(np.uint8)


def _scale_float(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Float greyscale → uint8: 0..1 times 255, 0..255 as is, 0..65535 ÷ 257; anything else refused."""
    if not np.isfinite(arr).all():
        raise DataError(f"Image {path} is a float (F) image with NaN or infinite values. {_SKIP_HINT}")
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo < 0 or hi > 65535:
        raise DataError(
            f"Image {path} is a float (F) image with values {lo:g}..{hi:g}, outside 0..65535: their scale is "
            f"unknown, so it is refused rather than clipped. Rescale such images first. {_SKIP_HINT}"
        )
    scale = 255.0 if hi <= 1.0 else 1.0 if hi <= 255 else 1 / 257.0
    return np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _composite_on_black(img: Image.Image) -> np.ndarray:
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
    return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)


def _to_rgb(img: Image.Image, path: str | Path) -> np.ndarray:
    if img.mode in _WIDE_MODES or img.mode == "F":
        arr = np.asarray(img)
        gray = _scale_float(arr, path) if img.mode == "F" else _scale_wide(arr, img.mode, path)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_black(img)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def load_rgb(path: str | Path, max_pixels: int | None = PIL_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode any image file to the ``H×W×3`` RGB ``uint8`` values it means (rules in the module docstring).

    Args:
        path: the image file.
        max_pixels: refuse larger images before decoding them (``data.max_image_pixels``); None: no limit.

    Raises:
        DataError: naming the file, if it cannot be decoded, is too large, or holds values of unknown scale.
    """
    _check_limit(max_pixels)
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise _bomb(path, img.size, max_pixels)
            img.load()
            return _to_rgb(img, path)
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own guard fired first (its limit is at most ours)
        raise DataError(
            f"Image {path} is refused as a decompression bomb: {err} (data.max_image_pixels={max_pixels}). Raise "
            f"data.max_image_pixels (null: no limit) if the image is genuine. {_SKIP_HINT}"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Cannot decode image {path}: {err} (truncated, or not an image). {_SKIP_HINT}") from err


def load_image(path: str | Path, in_chans: int = 3, max_pixels: int | None = PIL_MAX_IMAGE_PIXELS) -> np.ndarray:
    """:func:`load_rgb`, then ``H×W×1`` luminance when ``in_chans`` is 1 (what the datasets feed models)."""
    return to_channels(load_rgb(path, max_pixels), in_chans)


def to_channels(rgb: np.ndarray, in_chans: int) -> np.ndarray:
    """An ``H×W×3`` RGB array as the datasets feed a model with ``in_chans`` channels (1: luminance).

    The one channel rule after decoding, so prediction can decode a file once and feed members with
    different input channels from it.
    """
    if in_chans == 1:
        return np.array(Image.fromarray(rgb).convert("L"))[..., None]
    return rgb


def _fingerprint(table: ImageTable) -> str:
    """Hash of every image's path (relative to their common folder), size and mtime, and the size limit."""
    paths = [os.path.abspath(p) for p in table.paths]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    lines = [f"{os.path.relpath(p, root)}\t{st.st_size}\t{st.st_mtime_ns}" for p, st in zip(paths, map(os.stat, paths))]
    return short_hash(f"{_VERIFY_FORMAT}\n{table.max_pixels}\n" + "\n".join(lines), 16)


def _decode_all(table: ImageTable, workers: int) -> list[DataError | None]:
    """Decode every image (in ``workers`` threads; Pillow releases the GIL while decoding); the error of each."""

    def check(path: Path) -> DataError | None:
        try:
            load_rgb(path, table.max_pixels)
        except DataError as err:
            return err
        return None

    desc = f"Verifying {len(table)} images"
    if workers <= 1:
        return [check(p) for p in progress(table.paths, len(table), desc, unit="img")]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(progress(pool.map(check, table.paths), len(table), desc, unit="img"))


def _recorded(record: Path | None) -> dict[str, Any] | None:
    if record is None or not record.is_file():
        return None
    try:
        return dict(read_json(record))
    except (OSError, ValueError) as err:  # a damaged record is only a lost shortcut
        log.warning("Ignoring the image verification record %s: %s", record, err)
        return None


def verify_images(table: ImageTable, skip_bad: bool, workers: int = 0, record_dir: str | Path | None = None) -> ImageTable:
    """Decode every image once, before training, so a bad file fails fast (or is skipped).

    Args:
        table: rows to check (its ``max_pixels`` is the size limit).
        skip_bad: drop unreadable, too large or unscalable files with a warning and a count instead of raising.
        workers: decoding threads (``data.num_workers``); 0 or 1 decode in this thread.
        record_dir: where the result is recorded as ``verified-<fingerprint>.json`` (the sweep folder; never the
            data root, which may be read-only). The fingerprint covers every image's path, size and mtime, so
            a table verified before is not decoded again, and any changed, added or removed file verifies
            the whole table anew. None: nothing is recorded.

    Raises:
        DataError: the first bad file (without ``skip_bad``), or every file is bad.
    """
    record = Path(record_dir) / f"verified-{_fingerprint(table)}.json" if record_dir is not None and len(table) else None
    done = _recorded(record)
    if done is not None:
        log.info("Images already verified (%s); not decoding them again.", record)
        errors: list[DataError | None] = [None] * len(table)
        for i, why in done["bad"].items():
            errors[int(i)] = DataError(why)
    else:
        seen_before = _eight_bit_wide
        errors = _decode_all(table, workers)
        if (wide := _eight_bit_wide - seen_before) > 0:
            log.warning("%d of %d images are 16/32-bit files holding 8-bit values (0..255); their values were kept, "
                        "not divided by 257.", wide, len(table))
    bad = [i for i, err in enumerate(errors) if err is not None]
    if bad and not skip_bad:
        message = str(errors[bad[0]]).rstrip(".")
        hint = "" if _SKIP_HINT in message else f". {_SKIP_HINT}"
        raise DataError(f"{message}{hint}") from errors[bad[0]]
    if record is not None and done is None:
        try:
            write_json(record, {"rows": len(table), "bad": {str(i): str(errors[i]) for i in bad}})
        except OSError as err:
            log.warning("Cannot record the image verification in %s (%s); it will run again next time.", record, err)
    if not bad:
        return table
    for i in bad:
        log.warning("Skipping unreadable image %s (%s)", table.paths[i], errors[i])
    log.warning("Skipped %d unreadable image(s) of %d", len(bad), len(table))
    if len(bad) == len(table):
        raise DataError(f"All {len(table)} images are unreadable, e.g. {table.paths[0]}; nothing is left to use.")
    keep = np.ones(len(table), dtype=bool)
    keep[bad] = False
    return table.subset(keep)
