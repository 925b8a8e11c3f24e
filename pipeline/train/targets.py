"""A member's task in training: its loss resolved and checked with ``monitor``, its validation scores.

The task comes from the training table (:mod:`pipeline.data.targets`); the output head and losses from
:mod:`pipeline.models.heads`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.task import Task
from pipeline.models.heads import resolve_loss
from pipeline.train.spec import LOSS_NAMES, TrainSpec

__all__ = ["resolve_task_recipe", "val_scores"]


def resolve_task_recipe(spec: TrainSpec, task: Task) -> TrainSpec:
    """The spec with its loss resolved for the task (``auto``), checked against it with ``monitor``.

    Raises:
        ConfigError: a loss the task can't take; a monitor the task's members never log.
    """
    mixing = spec.mixup is not None and spec.mixup.enabled
    loss = resolve_loss(spec.loss, task, mixing) if spec.loss in LOSS_NAMES else spec.loss  # check_recipe names it
    if spec.snapshots and not task.softmax:
        raise ConfigError(f"snapshots={spec.snapshots}: snapshot members are made for one class per image only; "
                          f"this is a {task.kind} task. Set snapshots=0.")
    logged = _MONITORS["softmax" if task.softmax else task.kind]
    if spec.monitor not in logged and spec.monitor.startswith("val/"):
        raise ConfigError(f"monitor={spec.monitor} is not logged by {task.kind} members ({task.reason or 'data.task'}); "
                          f"accepted: {', '.join(logged)} (val/loss is the task's loss).")
    return replace(spec, loss=loss)


_MONITORS = {"softmax": ("val/log_loss", "val/acc"), "multilabel": ("val/loss", "val/log_loss", "val/acc"),
             "regression": ("val/loss", "val/rmse", "val/mae"), "ordinal": ("val/loss", "val/rmse", "val/mae")}


def val_scores(probs: np.ndarray, labels: np.ndarray, task: Task) -> dict[str, float]:
    """The member's validation scores: accuracy and log loss of one class per image; the task's otherwise."""
    if task.softmax:
        return {"val_acc": float((probs.argmax(1) == labels).mean()),
                "val_log_loss": float(-np.log(np.clip(probs[np.arange(len(probs)), labels], 1e-15, 1)).mean())}
    if task.kind == "multilabel":
        p = np.clip(probs, 1e-15, 1 - 1e-15)
        bce = -(labels * np.log(p) + (1 - labels) * np.log1p(-p)).mean()
        return {"val_acc": float(((probs > 0.5) == (labels > 0.5)).mean()), "val_log_loss": float(bce)}
    err = probs[:, 0] - labels
    return {"val_rmse": float(np.sqrt(np.mean(err ** 2))), "val_mae": float(np.mean(np.abs(err)))}
