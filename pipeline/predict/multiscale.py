"""The ``multiscale`` TTA policy (GoogLeNet-style scales × squares × flips × crops), registered in :data:`POLICIES`.

Imported by :mod:`pipeline.predict.tta` itself, so the policy is always registered; see that module's
table for the fields it reads.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pipeline.predict.tta import TTAPolicy, _crop, _flip, _side, register_policy

__all__: list[str] = []


def _resize(batch: Tensor, height: int, width: int) -> Tensor:
    if batch.shape[-2:] == (height, width):
        # Native size stays bit-exact, so a scale equal to the input gives the plain crops.
        return batch
    return F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


@register_policy("multiscale", count=lambda p: len(p.scales) * p.squares * len(p.crops) * len(p.flips))
def _multiscale_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    views: list[Tensor] = []
    for scale in policy.scales:
        for square in _squares(_resize_shorter(batch, scale), scale, policy.squares):
            for axis in policy.flips:
                mirrored = _flip(square, axis)
                views += [_square_crop(mirrored, _side(policy), where) for where in policy.crops]
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
        return [_crop(batch, side, "center")]
    if width >= height:
        return [_crop(batch, side, where) for where in ("tl", "center", "tr")]
    return [_crop(batch, side, where) for where in ("tl", "center", "bl")]


def _square_crop(square: Tensor, size: int, where: str) -> Tensor:
    if where == "full":
        return _resize(square, size, size)
    return _crop(square, size, where)
