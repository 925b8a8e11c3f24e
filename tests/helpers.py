"""Test helpers shared by several test modules."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.cli.train import train_spec
from pipeline.train.fit import train_member


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the member a composed ``train`` config describes, as ``pipeline-train`` does (without failure recording)."""
    return train_member(train_spec(cfg))
