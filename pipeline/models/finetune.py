"""Fine-tuning controls: split head from backbone, freeze the backbone, per-part learning rates.

The head is whatever timm's ``get_classifier()`` returns; everything else is the backbone. A
frozen backbone has ``requires_grad=False`` and its BatchNorm layers in eval mode, so neither its
weights nor its running statistics move. Optimizers are built over *all* parameters
(:func:`build_param_groups`), so unfreezing needs no new optimizer: frozen parameters simply have
no gradient and are skipped by the optimizer's step.

    >>> groups = build_param_groups(model, lr=1e-3, head_lr=1e-2)  # doctest: +SKIP
    >>> trainer = pl.Trainer(callbacks=[BackboneFreeze(unfreeze_at_epoch=2)])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import timm.optim
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "head_and_backbone_params",
    "set_backbone_frozen",
    "build_param_groups",
    "BackboneFreeze",
]

log = logging.getLogger(__name__)


def _head_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier module(s) of a timm model (distilled models return a tuple)."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        raise TypeError(f"{type(model).__name__} has no get_classifier(); pass a timm model")
    head = get_classifier()
    return list(head) if isinstance(head, (tuple, list)) else [head]


def head_and_backbone_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split ``model``'s parameters into (head, backbone), each in ``model.parameters()`` order.

    Args:
        model: A timm model; its ``get_classifier()`` defines the head.

    Returns:
        ``(head, backbone)``; the head is empty for a model built with ``num_classes=0``.
    """
    head_ids = {id(p) for m in _head_modules(model) for p in m.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) in head_ids], [p for p in params if id(p) not in head_ids]


def _backbone_norms(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers outside the head: the ones whose running statistics freezing must keep."""
    head = {id(m) for h in _head_modules(model) for m in h.modules()}
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in head]


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze everything but the classifier.

    Freezing sets ``requires_grad=False`` on backbone parameters and puts backbone BatchNorm
    layers in eval mode, so a training-mode forward neither updates their running statistics nor
    normalises with batch statistics. Unfreezing gives the BatchNorm layers the model's own mode.
    ``model.train()`` undoes the eval mode, so call this again after it (:class:`BackboneFreeze`
    does, at the start of every epoch).

    Args:
        model: A timm model.
        frozen: ``True`` to freeze, ``False`` to unfreeze.
    """
    _, backbone = head_and_backbone_params(model)
    for param in backbone:
        param.requires_grad_(not frozen)
    for norm in _backbone_norms(model):
        norm.train(model.training and not frozen)


@contextlib.contextmanager
def _all_trainable(model: nn.Module) -> Iterator[None]:
    """Temporarily mark every parameter trainable; timm's group builders skip frozen ones."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def _split_decay(
    params: list[nn.Parameter], name: str, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Groups for ``params``: biases and norm weights (1-D) get no weight decay, as in timm."""
    if not weight_decay:
        return [{"name": name, "params": params, "lr": lr, "weight_decay": 0.0}] if params else []
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay},
        {"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _layer_decay_groups(
    model: nn.Module, lr: float, layer_decay: float, weight_decay: float, head_lr: float | None
) -> list[dict[str, Any]]:
    """timm's layer-wise decay groups, with ``lr_scale`` turned into an explicit ``lr``.

    ``lr_scale`` is dropped because timm's schedulers multiply it into the lr again.
    """
    with _all_trainable(model):
        timm_groups = timm.optim.param_groups_layer_decay(
            model, weight_decay=weight_decay, layer_decay=layer_decay
        )
    head_ids = {id(p) for p in head_and_backbone_params(model)[0]}
    groups: list[dict[str, Any]] = []
    head: list[nn.Parameter] = []
    for i, group in enumerate(timm_groups):
        params = group["params"]
        if head_lr is not None:
            head += [p for p in params if id(p) in head_ids]
            params = [p for p in params if id(p) not in head_ids]
        if params:
            lr_i, decay = lr * group["lr_scale"], group["weight_decay"]
            groups.append({"name": f"layer_group{i}", "params": params, "lr": lr_i, "weight_decay": decay})
    if head_lr is not None:
        groups += _split_decay(head, "head", head_lr, weight_decay)
    return groups


def build_param_groups(
    model: nn.Module,
    lr: float,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups over all of ``model``'s parameters, each with an explicit ``lr``.

    Frozen parameters are included, so the same optimizer keeps working after unfreezing. 1-D
    parameters (biases, norm weights) get no weight decay. Each group has a unique ``name``,
    which Lightning's ``LearningRateMonitor`` uses as its label.

    Args:
        model: A timm model.
        lr: Backbone learning rate (the top layer's rate under layer decay).
        head_lr: Classifier learning rate; ``None`` means ``lr``.
        layer_decay: If set, layer ``i`` of ``L`` gets ``lr * layer_decay ** (L - 1 - i)`` using
            timm's ``param_groups_layer_decay`` (the model's ``group_matcher`` defines layers).
        weight_decay: Weight decay for weights with two or more dimensions.

    Returns:
        A list of dicts for ``torch.optim.Optimizer(params=...)``.

    >>> groups = build_param_groups(timm.create_model("resnet18"), lr=0.01, head_lr=0.1)  # doctest: +SKIP
    >>> [(g["name"], g["lr"]) for g in groups]  # doctest: +SKIP
    [('backbone', 0.01), ('head', 0.1)]
    """
    if layer_decay is not None:
        return _layer_decay_groups(model, lr, layer_decay, weight_decay, head_lr)
    head, backbone = head_and_backbone_params(model)
    return _split_decay(backbone, "backbone", lr, weight_decay) + _split_decay(
        head, "head", lr if head_lr is None else head_lr, weight_decay
    )


class BackboneFreeze(pl.Callback):
    """Freeze the backbone for the first ``unfreeze_at_epoch`` epochs, then train everything.

    The LightningModule must hold the timm model as ``self.model``. While frozen, the freeze is
    re-applied before every training batch: anything that calls ``model.train()`` (older
    Lightning at each epoch start, a module's own ``on_train_epoch_start``, which runs after the
    callbacks, or an ``on_validation_model_train`` override) puts BatchNorm back into training
    mode. Build the optimizer over all parameters (:func:`build_param_groups`): frozen ones get
    no gradient, and they start learning at ``unfreeze_at_epoch`` without a new optimizer.

    Args:
        unfreeze_at_epoch: First epoch (0-based) that trains the backbone; 0 disables freezing.
    """

    def __init__(self, unfreeze_at_epoch: int) -> None:
        if unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self._frozen = False

    @staticmethod
    def _model(pl_module: pl.LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            raise AttributeError("BackboneFreeze needs the timm model as `self.model` on the LightningModule")
        return model

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Freeze during the first epochs; unfreeze once, at ``unfreeze_at_epoch``."""
        frozen = trainer.current_epoch < self.unfreeze_at_epoch
        if not frozen and not self._frozen:
            return  # never touch requires_grad flags we did not set
        set_backbone_frozen(self._model(pl_module), frozen)
        if frozen != self._frozen:
            log.info("Epoch %d: backbone %s", trainer.current_epoch, "frozen" if frozen else "unfrozen")
        self._frozen = frozen

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Keep backbone BatchNorm in eval mode whatever called ``train()`` since the last batch."""
        if self._frozen:
            set_backbone_frozen(self._model(pl_module), True)
