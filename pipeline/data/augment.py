"""Augmentation: albumentations pipelines, channel statistics, and normalisation and centre crops on the device.

The train pipeline (``conf/aug/*.yaml: train``) ends in ``Normalize`` + ``ToTensorV2``. The eval pipeline
(``eval``) is geometric only: it resizes to S×S and returns ``uint8``; normalisation then happens on the
device (:func:`normalize_batch`), so one decoded batch can feed members with different mean/std, and
the host→device copy moves bytes rather than floats. The TTA stage crops the S×S batch to C×C.

Resizing: the configs' ``A.Resize`` takes ``area_for_downscale: image`` (``aug.area_for_downscale``), so an
image that shrinks (a 1024 px photo to 128 px) is resampled with ``cv2.INTER_AREA`` instead of aliasing
bilinear sampling; an image that grows keeps the bilinear rule. The eval transform is serialised into the
member folder (``eval_transform.json``) with this setting, so a member predicts with the rule it was trained
with, and members written before the setting (no ``area_for_downscale``, or ``None``) predict as before.
:func:`resize_settings` reads the rule off a pipeline, so the image cache resizes exactly as the pipeline it
feeds (:func:`resize_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch

__all__ = [
    "match_channels", "resolve_normalization", "normalize_batch", "center_offset", "center_crop",
    "transform_to_dict", "transform_from_dict", "resize_settings", "resize_image",
]


def match_channels(values: Sequence[float], in_chans: int, key: str = "aug.mean") -> list[float]:
    """Per-channel statistics for ``in_chans`` channels: the one rule for every mean/std in the project.

    The same length is kept; one channel takes the average (timm sums a stem's RGB filters for grey
    input); a single value is repeated; three (RGB) values repeat cyclically, as timm's stem
    adaptation repeats RGB filters for more channels. Anything else is an error naming ``key``.
    """
    vals = [float(v) for v in values]
    if len(vals) == in_chans:
        return vals
    if in_chans == 1:
        return [sum(vals) / len(vals)]
    if len(vals) == 1:
        return vals * in_chans
    if len(vals) == 3:
        return [vals[i % 3] for i in range(in_chans)]
    raise ValueError(f"{key} has {len(vals)} values but the model takes in_chans={in_chans}.")


def resolve_normalization(
    data_config: dict[str, Any], in_chans: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """Mean/std from the timm model's data config unless overridden; fitted to ``in_chans``.

    Args:
        data_config: output of ``timm.data.resolve_model_data_config``.
        in_chans: channels the model takes (see :func:`match_channels`).
        mean: override (``aug.mean``), or None.
        std: override (``aug.std``), or None.
    """
    m = list(mean) if mean is not None else list(data_config["mean"])
    s = list(std) if std is not None else list(data_config["std"])
    return match_channels(m, in_chans, "aug.mean"), match_channels(s, in_chans, "aug.std")


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8`` (or 0–255 float) ``[B,C,H,W]`` → normalised float32, as albumentations' Normalize does."""
    x = images.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0
    inv = 1.0 / (torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0)
    return (x - m) * inv


def center_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centre ``size``×``size`` crop, with torchvision's rounding for odd gaps.

    ``int(round(.))`` is banker's rounding, exactly what ``torchvision``'s ``center_crop`` uses.
    """
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def center_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size``×``size`` crop of ``[..., H, W]`` images (what validation and TTA ``none`` see)."""
    if size > min(batch.shape[-2:]):
        raise ValueError(
            f"Crop size {size} (data.crop_size) is larger than the {tuple(batch.shape[-2:])} image (data.image_size)"
        )
    top, left = center_offset(batch.shape[-2], batch.shape[-1], size)
    return batch[..., top : top + size, left : left + size]


def transform_to_dict(transform: A.BasicTransform | A.BaseCompose) -> dict[str, Any]:
    """Serialise an albumentations pipeline so a member folder carries its exact eval transform."""
    return A.to_dict(transform)


def transform_from_dict(data: dict[str, Any]) -> A.BaseCompose:
    """Rebuild a pipeline written by :func:`transform_to_dict`."""
    return A.from_dict(data)


_RESIZE_KEYS = ("interpolation", "area_for_downscale")


def resize_settings(transform: A.BasicTransform | A.BaseCompose | dict[str, Any] | None) -> dict[str, Any]:
    """How the first ``A.Resize`` of ``transform`` resamples: ``{"interpolation": ..., "area_for_downscale": ...}``.

    ``transform`` may be a pipeline or its :func:`transform_to_dict` form (``eval_transform.json``). Without a
    ``Resize`` (or a transform), and for keys an old serialised pipeline lacks, albumentations' defaults apply
    (bilinear, no area): what such a pipeline, or a member trained before the setting existed, used.

    >>> resize_settings(A.Compose([A.Resize(8, 8, area_for_downscale="image")]))
    {'interpolation': 1, 'area_for_downscale': 'image'}
    """
    if isinstance(transform, dict):
        transform = transform_from_dict(transform)
    stack: list[Any] = [transform] if transform is not None else []
    while stack:
        node = stack.pop(0)
        if isinstance(node, A.Resize):
            return {k: getattr(node, k) for k in _RESIZE_KEYS}
        stack[:0] = list(getattr(node, "transforms", []))
    default = A.Resize(1, 1)
    return {k: getattr(default, k) for k in _RESIZE_KEYS}


def resize_image(image: np.ndarray, size: int, settings: dict[str, Any] | None = None) -> np.ndarray:
    """``H×W×C`` → ``size×size×C`` as ``A.Resize(size, size, **settings)`` does it (settings: :func:`resize_settings`)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(A.Resize(size, size, **(settings or {}))(image=image)["image"])
