"""Augmentation: albumentations pipelines from config, and normalisation on the device.

The train pipeline (``conf/aug/*.yaml: train``) ends in ``Normalize`` + ``ToTensorV2``. The eval pipeline
(``eval``) is geometric only: it resizes to S×S and returns ``uint8``; normalisation then happens on the
device (:func:`normalize_batch`), so one decoded batch can feed members with different mean/std, and
the host→device copy moves bytes rather than floats. The TTA stage crops the S×S batch to C×C.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import torch

__all__ = ["resolve_normalization", "normalize_batch", "transform_to_dict", "transform_from_dict"]


def resolve_normalization(
    data_config: dict[str, Any], in_chans: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """Mean/std from the timm model's data config unless overridden; fitted to ``in_chans``.

    Args:
        data_config: output of ``timm.data.resolve_model_data_config``.
        in_chans: channels the model takes; a 3-value mean is averaged for 1 channel.
        mean: override (``aug.mean``), or None.
        std: override (``aug.std``), or None.
    """
    m = list(mean) if mean is not None else list(data_config["mean"])
    s = list(std) if std is not None else list(data_config["std"])

    def fit(values: list[float], key: str) -> list[float]:
        if len(values) == in_chans:
            return [float(v) for v in values]
        if in_chans == 1:
            return [float(sum(values) / len(values))]
        if len(values) == 1:
            return [float(values[0])] * in_chans
        raise ValueError(f"aug.{key} has {len(values)} values but the model takes in_chans={in_chans}.")

    return fit(m, "mean"), fit(s, "std")


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8`` (or 0–255 float) ``[B,C,H,W]`` → normalised float32, as albumentations' Normalize does."""
    x = images.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0
    inv = 1.0 / (torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0)
    return (x - m) * inv


def transform_to_dict(transform: A.BasicTransform | A.BaseCompose) -> dict[str, Any]:
    """Serialise an albumentations pipeline so a member folder carries its exact eval transform."""
    return A.to_dict(transform)


def transform_from_dict(data: dict[str, Any]) -> A.BaseCompose:
    """Rebuild a pipeline written by :func:`transform_to_dict`."""
    return A.from_dict(data)
