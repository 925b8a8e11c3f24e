"""The LightningModule: any timm model (or a registered classic) trained with cross-entropy (or a soft-target loss).

Validation sees exactly what the ``none`` TTA policy sees at inference (S×S image, centre C×C crop,
normalised on the device), so a member's saved validation predictions are its ``none``-policy OOF
predictions. Training may mix batches (Mixup/CutMix) and use soft targets (:mod:`pipeline.train.recipe`);
validation loss and metrics always use the hard labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from pipeline.core.errors import ConfigError, TrainError
from pipeline.data.augment import center_crop, normalize_batch
from pipeline.models.factory import create_model
from pipeline.models.finetune import build_param_groups
from pipeline.models.heads import OutputHead, task_loss
from pipeline.train.loggers import log_sample_grid
from pipeline.train.recipe import create_mixup, training_loss
from pipeline.train.schedules import schedule_interval
from pipeline.train.teacher import teacher_loss

__all__ = ["ClassifierModule", "NonFiniteLossError", "optimizer_lr"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class NonFiniteLossError(TrainError, FloatingPointError):
    """The training loss became NaN or infinite: the member failed (still a ``FloatingPointError``)."""


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classifier around :func:`pipeline.models.factory.create_model`.

    Only plain values go into ``hparams`` (the optimizer/scheduler factories are excluded), so the
    checkpoint loads with ``torch.load(..., weights_only=True)``.

    Args:
        model_name: timm (or classic) model name.
        num_classes: number of classes.
        in_chans: input channels.
        crop_size: C, the side of the crop the network sees.
        mean: per-channel normalisation mean (0–1 scale).
        std: per-channel normalisation std.
        pretrained: use timm's pretrained weights (hub) when ``weights`` is not given.
        weights: local weights file for fine-tuning.
        model_kwargs: extra ``timm.create_model`` keyword arguments.
        label_smoothing: label smoothing of the training targets (Mixup's, when mixing).
        loss: the training loss (:func:`pipeline.train.recipe.training_loss`).
        mixup: Mixup/CutMix settings (a :class:`~pipeline.train.spec.MixupSpec` as a dict), or None.
        output: the output head (:class:`pipeline.models.heads.OutputHead` as a dict); None: softmax over
            classes. Other heads (multi-label, regression, ordinal) train with their task's loss
            (:func:`pipeline.models.heads.task_loss`) and validate with ``val/loss`` plus the task's scores.
        optimizer: ``functools.partial`` of an optimizer class (from ``conf/optimizer``).
        scheduler: ``functools.partial`` of an LR scheduler (from ``conf/scheduler``), or None.
        head_lr: separate learning rate for the classifier head.
        layer_decay: layer-wise learning-rate decay (timm), instead of ``head_lr``.
        teacher: ``{"temperature": T}`` when training from a teacher's soft targets (batches then carry ``soft``,
            ``soft_w`` and ``hard_w``; :func:`pipeline.train.teacher.teacher_loss`); None: the labels alone.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        in_chans: int,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        pretrained: bool = False,
        weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        head_lr: float | None = None,
        layer_decay: float | None = None,
        loss: str = "cross_entropy",
        mixup: dict[str, Any] | None = None,
        output: dict[str, Any] | None = None,
        teacher: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model: nn.Module = create_model(
            model_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
            weights=weights, **(model_kwargs or {}),
        )
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=1e-3)
        self.scheduler_factory = scheduler
        self.mean, self.std = list(mean), list(std)
        self.crop_size = int(crop_size)
        classes = max(num_classes, 2)  # a value head has one output; its accuracies are never updated
        self.val_acc = MulticlassAccuracy(num_classes=classes, average="micro")
        self.train_acc = MulticlassAccuracy(num_classes=classes, average="micro")
        self.val_log_loss = MeanMetric()  # mean per-sample NLL over the epoch (multiclass log loss)
        self.samples_logged = False
        self.head = OutputHead.from_dict(output)
        if loss == "auto" and self.head.rows_sum_to_one:  # as pipeline.models.heads.resolve_loss picks it
            loss = "soft_target_cross_entropy" if (mixup or {}).get("mixup", 0) or (mixup or {}).get("cutmix", 0) \
                else "cross_entropy"
        if self.head.rows_sum_to_one:
            self.criterion = training_loss(loss, float(label_smoothing), num_classes)
        else:
            self.criterion = task_loss(loss, self.head)
            self.val_loss = MeanMetric()  # the task's validation loss: mean per-label BCE, or MSE in target units
            self.val_quality = MeanMetric()  # per-label accuracy, or the mean absolute error
            self.val_rmse = MeanSquaredError(squared=False)
        self.mixup = create_mixup(mixup, float(label_smoothing), num_classes)
        self.teacher_temperature = None if teacher is None else float(teacher["temperature"])

    def set_head(self, head: OutputHead) -> None:
        """Use another output head of the same kind (a linear head's standardisation from the training rows)."""
        self.head = head
        self.hparams["output"] = head.to_dict()
        self.criterion = task_loss(self.hparams["loss"], head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for already normalised, already cropped images."""
        return self.model(images)

    def eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a ``uint8`` S×S eval batch: normalise on the device, centre-crop to C."""
        # contiguous, as the TTA views are: the network sees the same memory layout at validation and inference
        return self.model(center_crop(normalize_batch(images, self.mean, self.std), self.crop_size).contiguous())

    def _log_lr(self, per_step: bool) -> None:
        # train/lr: the largest rate among the parameter groups (optimizer.lr as scheduled, unless head_lr is larger)
        optimizers = self.trainer.optimizers
        if optimizers:
            lr = max(float(group["lr"]) for group in optimizers[0].param_groups)
            self.log("train/lr", lr, on_step=per_step, on_epoch=not per_step, batch_size=1)

    def _steps_per_update(self) -> bool:
        return self.scheduler_factory is not None and schedule_interval(self.scheduler_factory) == "step"

    def on_train_epoch_start(self) -> None:
        if not self._steps_per_update():  # per-epoch schedules: the rate at the epoch's start is the epoch's rate
            self._log_lr(per_step=False)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._steps_per_update():  # the rate this batch's optimiser step uses
            self._log_lr(per_step=True)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch["image"], batch["target"]
        if self.mixup is not None:  # soft targets (rows sum to 1); the accuracy below stays on the hard labels
            images, targets = self.mixup(images, batch["target"])
        if batch_idx == 0 and self.current_epoch == 0 and not self.samples_logged:
            # once: the first batch the network trains on, after augmentation and mixing (W&B only)
            self.samples_logged = log_sample_grid(self.logger, images, self.mean, self.std, self.global_step)
        logits = self(images)
        if self.teacher_temperature is not None:
            loss = teacher_loss(logits, batch, self.teacher_temperature)
        else:
            loss = self.criterion(logits, targets)
        if not torch.isfinite(loss):
            # Training on from here would only produce garbage weights; stop this member now.
            raise NonFiniteLossError(
                f"Non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}. "
                "Lower the learning rate (optimizer.lr), enable gradient clipping (trainer.gradient_clip_val) "
                "or check the inputs."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        if self.head.rows_sum_to_one:
            labelled = batch["target"] >= 0  # a teacher's test images have no label
            self.train_acc(logits[labelled], batch["target"][labelled])
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(logits))
        return loss

    def _validate_outputs(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Multi-label: ``val/loss`` = ``val/log_loss`` (mean per-label BCE) and ``val/acc`` (per-label accuracy);
        values: ``val/loss`` (MSE), ``val/rmse`` and ``val/mae`` in target units."""
        n = len(logits)
        out = self.head(logits)
        if self.head.activation == "sigmoid":
            y = target.float()
            bce = F.binary_cross_entropy(out.clamp(1e-7, 1 - 1e-7), y, reduction="none").mean(-1)
            self.val_loss(bce)
            self.val_log_loss(bce)
            self.val_quality(((out > 0.5) == (y > 0.5)).float().mean(-1))
            self.log("val/log_loss", self.val_log_loss, on_epoch=True, prog_bar=True, batch_size=n)
            self.log("val/acc", self.val_quality, on_epoch=True, prog_bar=True, batch_size=n)
        else:
            err = out.squeeze(-1) - target.float()
            self.val_loss(err.square())
            self.val_quality(err.abs())
            self.val_rmse(out.squeeze(-1), target.float())
            self.log("val/rmse", self.val_rmse, on_epoch=True, prog_bar=True, batch_size=n)
            self.log("val/mae", self.val_quality, on_epoch=True, batch_size=n)
        self.log("val/loss", self.val_loss, on_epoch=True, batch_size=n)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.eval_logits(batch["image"])
        if not self.head.rows_sum_to_one:
            self._validate_outputs(logits, batch["target"])
            return
        target = batch["target"]
        self.val_log_loss(F.cross_entropy(logits.float(), target, reduction="none"))
        self.val_acc(logits, target)
        n = len(logits)
        self.log("val/log_loss", self.val_log_loss, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=n)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Row indices and outputs (``none`` policy: softmax probabilities, or the task's outputs) for one batch."""
        return {"index": batch["index"], "probs": self.head(self.eval_logits(batch["image"]))}

    def configure_optimizers(self) -> Any:
        base_lr = optimizer_lr(self.optimizer_factory)
        groups = build_param_groups(
            self.model, lr=base_lr, head_lr=self.hparams["head_lr"], layer_decay=self.hparams["layer_decay"],
            weight_decay=float(getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)),
        )
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        if not self._steps_per_update():
            scheduler = self.scheduler_factory(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        # A per-step schedule needs the run's length in optimiser steps, which only the Trainer knows.
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("scheduler: a per-step schedule needs a run of known length; set trainer.max_epochs "
                              "or trainer.max_steps.")
        per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        scheduler = self.scheduler_factory(optimizer, total_steps=int(total), steps_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def optimizer_lr(factory: OptimizerFactory) -> float:
    """The ``lr`` a partial optimizer was configured with (required, so the groups can carry it)."""
    lr = getattr(factory, "keywords", {}).get("lr")
    if lr is None or not math.isfinite(float(lr)):
        raise ConfigError(f"optimizer.lr={lr!r} must be set to a finite number.")
    return float(lr)
