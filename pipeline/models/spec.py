"""The ``model`` config group's schema (``conf/model/*.yaml``): one network and how to fine-tune it.

Each model yaml starts with ``defaults: [base_model, _self_]``, so Hydra validates it against
:class:`ModelSpec` (registered by :func:`pipeline.cli.config.register`): a misspelt key or a wrongly
typed value fails at composition time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import MISSING

__all__ = ["ModelSpec"]


@dataclass
class ModelSpec:
    """One network and how to fine-tune it.

    Attributes:
        name: timm model name (or ``lenet5``/``alexnet``/``nin`` from :mod:`pipeline.models.classic`).
        pretrained: Load timm's default weights from the hub (needs network access).
        weights: Local weights file; takes precedence over ``pretrained``.
        kwargs: Extra ``timm.create_model`` arguments (``drop_rate``, ``drop_path_rate``, ``lrn``...).
        min_input_size: Smallest square input the forward pass accepts (checked before training).
        default_image_size: The input size the architecture was designed for (informational).
        freeze_backbone_epochs: Train only the classifier for this many epochs first.
        head_lr: Classifier learning rate; ``None`` means the optimizer's lr.
        layer_decay: Layer-wise lr decay factor (e.g. 0.75); ``None`` disables it.
    """

    name: str = MISSING
    pretrained: bool = False
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    min_input_size: int = 32
    default_image_size: int = 224
    freeze_backbone_epochs: int = 0
    head_lr: float | None = None
    layer_decay: float | None = None
