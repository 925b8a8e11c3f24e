"""Decoding: any image file to RGB ``uint8`` (greyscale, RGBA, palette and 16-bit files included).

A truncated or unreadable file raises :class:`~pipeline.core.errors.DataError` naming it;
:func:`verify_images` decodes a whole table once before training, so a bad file fails fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from pipeline.core.errors import DataError
from pipeline.data.tables import ImageTable

__all__ = ["load_rgb", "load_image", "to_channels", "verify_images"]

log = logging.getLogger(__name__)

# A truncated JPEG must raise, not decode silently as grey: the user asked to hear about bad files.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode any image file to an ``H×W×3`` RGB ``uint8`` array.

    16-bit and 32-bit images are scaled to 8 bits by their type's range rather than clipped, and
    transparent pixels are composited onto black (what ``convert('RGB')`` would do for RGBA).

    Raises:
        DataError: naming the file, if it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(img)
                scale = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                gray = np.clip(arr.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            # Palette images go through RGBA so a transparent palette entry is handled like RGBA.
            rgba: Image.Image = img.convert("RGBA") if img.mode == "P" else img
            return np.array(rgba.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Cannot decode image {path}: {err}") from err


def load_image(path: str | Path, in_chans: int = 3) -> np.ndarray:
    """:func:`load_rgb`, then ``H×W×1`` luminance when ``in_chans`` is 1 (what the datasets feed models)."""
    return to_channels(load_rgb(path), in_chans)


def to_channels(rgb: np.ndarray, in_chans: int) -> np.ndarray:
    """An ``H×W×3`` RGB array as the datasets feed a model with ``in_chans`` channels (1: luminance).

    The one channel rule after decoding, so prediction can decode a file once and feed members with
    different input channels from it.
    """
    if in_chans == 1:
        return np.array(Image.fromarray(rgb).convert("L"))[..., None]
    return rgb


def verify_images(table: ImageTable, skip_bad: bool) -> ImageTable:
    """Decode every image once, before training, so a bad file fails fast (or is skipped).

    Args:
        table: rows to check.
        skip_bad: drop unreadable files with a warning and a count instead of raising.
    """
    bad: list[int] = []
    for i, path in enumerate(table.paths):
        try:
            load_rgb(path)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}. Set data.skip_bad_images=true to skip unreadable files.") from err
            bad.append(i)
            log.warning("Skipping unreadable image %s", path)
    if bad:
        log.warning("Skipped %d unreadable image(s) of %d", len(bad), len(table))
        keep = np.ones(len(table), dtype=bool)
        keep[bad] = False
        return table.subset(keep)
    return table
