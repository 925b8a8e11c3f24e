"""Whole-batch crops, flips and resizes for TTA, and the multiscale view builder; pure tensor functions.

Every function acts on the last two dims, so it takes a ``[B, C, H, W]`` batch in one call. The policies
that use them are registered in :mod:`pipeline.predict.tta`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from pipeline.data.augment import center_offset

__all__ = ["crop", "flip", "multiscale_views"]


def _offsets(height: int, width: int, size: int, where: str) -> tuple[int, int]:
    """(top, left) of a ``size``×``size`` crop; the centre follows :func:`pipeline.data.augment.center_offset`."""
    if where == "center":
        return center_offset(height, width, size)
    bottom, right = height - size, width - size
    return {"tl": (0, 0), "tr": (0, right), "bl": (bottom, 0), "br": (bottom, right)}[where]


def crop(batch: Tensor, size: int, where: str) -> Tensor:
    """The ``size``×``size`` crop at ``where`` (tl, tr, bl, br, center) of every image in the batch."""
    top, left = _offsets(batch.shape[-2], batch.shape[-1], size, where)
    return batch[..., top : top + size, left : left + size]


def flip(batch: Tensor, axis: str) -> Tensor:
    """Every image mirrored along ``axis`` (horizontal: left-right, vertical: top-bottom, none: as is)."""
    if axis == "none":
        return batch
    return batch.flip(-1 if axis == "horizontal" else -2)


def _resize(batch: Tensor, height: int, width: int) -> Tensor:
    if batch.shape[-2:] == (height, width):
        # Native size stays bit-exact, so a scale equal to the input gives the plain crops.
        return batch
    return F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


def multiscale_views(batch: Tensor, scales: Sequence[int], squares: int, crops: Sequence[str],
                     flips: Sequence[str], size: int) -> list[Tensor]:
    """GoogLeNet-style views: for each scale, for each square along the longer side, for each flip, each crop."""
    views: list[Tensor] = []
    for scale in scales:
        for square in _squares(_resize_shorter(batch, scale), scale, squares):
            for axis in flips:
                mirrored = flip(square, axis)
                views += [_square_crop(mirrored, size, where) for where in crops]
    return views


def _resize_shorter(batch: Tensor, shorter: int) -> Tensor:
    height, width = batch.shape[-2:]
    # torchvision's Resize(int) rule: the longer side is truncated, not rounded.
    if height <= width:
        return _resize(batch, shorter, int(shorter * width / height))
    return _resize(batch, int(shorter * height / width), shorter)


def _squares(batch: Tensor, side: int, count: int) -> list[Tensor]:
    """``count`` side×side squares along the longer axis: start, centre, end (GoogLeNet), or centre."""
    height, width = batch.shape[-2:]
    if count == 1:
        return [crop(batch, side, "center")]
    if width >= height:
        return [crop(batch, side, where) for where in ("tl", "center", "tr")]
    return [crop(batch, side, where) for where in ("tl", "center", "bl")]


def _square_crop(square: Tensor, size: int, where: str) -> Tensor:
    if where == "full":
        return _resize(square, size, size)
    return crop(square, size, where)
