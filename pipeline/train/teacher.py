"""Training from a finished ensemble: pseudo-labelling and knowledge distillation (``teacher=pseudo|distill``).

Both train an ordinary member on targets the ensemble of a finished predict folder made:

- **pseudo** (a second generation): the training rows keep their hard labels, and test images join the
  training rows with the ensemble's probabilities as targets (``teacher.targets=soft``) or its top class
  (``hard``), only those whose top probability reaches ``teacher.threshold``;
- **distill** (a student): every training row's target is ``alpha`` × the ensemble's tempered
  probabilities (loss × T², Hinton et al. 2015) + (1 − ``alpha``) × its hard label; test images join with
  the tempered probabilities alone (``teacher.test_rows``).

**Honest out-of-fold rows.** The targets come only from the source's members whose validation rows are
exactly the new member's validation rows (:func:`pipeline.predict.teacher.build_teacher_targets`), so no
target was made by a model that saw those rows' labels; test images only ever enter the training loader,
never validation. What the member trained on is recorded in its folder: ``teacher.json`` (source, its
digest, settings, members used, row counts) and ``teacher_targets.csv`` (every row, its weights and targets).

This module knows nothing of predict folders: the command line passes a builder from
:mod:`pipeline.predict.teacher` (training never imports inference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pipeline.core.errors import ConfigError
from pipeline.core.reduce import apply_temperature
from pipeline.member.teacher import TEACHER_KINDS, TeacherSpec, TeacherTargets

__all__ = ["TeacherDataset", "check_teacher", "teacher_loss"]

TARGET_KINDS = ("soft", "hard")


def _number(key: str, value: Any, low: float, high: float, accepted: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (low <= number <= high):
        raise ConfigError(f"teacher.{key}={value!r}: accepted: {accepted}.")
    return number


def check_teacher(spec: TeacherSpec, softmax: bool, mixing: bool, loss: str) -> None:
    """The settings themselves, before any data is read.

    Raises:
        ConfigError: naming the key and what is accepted.
    """
    if spec.kind not in TEACHER_KINDS:
        raise ConfigError(f"teacher.kind={spec.kind!r}: accepted: {', '.join(TEACHER_KINDS)} (or teacher=none).")
    if not str(spec.source or "").strip():
        raise ConfigError(f"teacher.source is not set: teacher={spec.kind} needs the predict folder of a finished "
                          "ensemble, e.g. teacher.source=outputs/demo/demo/predict.")
    _number("temperature", spec.temperature, 1e-3, 100.0, "a number in (0, 100], e.g. 2 or 4")
    _number("alpha", spec.alpha, 0.0, 1.0, "a number in [0, 1] (1: soft targets only, 0: hard labels only)")
    threshold = _number("threshold", spec.threshold, 0.0, 1.0, "a probability in [0, 1)")
    if threshold >= 1.0:
        raise ConfigError(f"teacher.threshold={spec.threshold!r}: accepted: a probability in [0, 1) (a top probability "
                          "never exceeds 1, so 1 would select no test image).")
    if spec.targets not in TARGET_KINDS:
        raise ConfigError(f"teacher.targets={spec.targets!r}: accepted: {', '.join(TARGET_KINDS)}.")
    if not softmax:
        raise ConfigError(f"teacher={spec.kind} trains on class probabilities: it needs one class per image "
                          "(data.task=multiclass); multi-label, regression and ordinal members cannot take it yet.")
    if mixing:
        raise ConfigError(f"teacher={spec.kind} with aug.mixup/aug.cutmix: mixing would have to mix the teacher's "
                          "targets too, which is not supported; set aug.mixup=0 aug.cutmix=0.")
    if loss not in ("auto", "cross_entropy"):
        raise ConfigError(f"loss={loss!r} with teacher={spec.kind}: the teacher's loss replaces it; accepted: "
                          "loss=auto or cross_entropy.")


class TeacherDataset(Dataset):
    """Training rows plus test rows, each with a soft target and the weights of its soft and hard terms."""

    def __init__(self, train: Dataset, test: Dataset | None, spec: TeacherSpec, targets: TeacherTargets,
                 num_classes: int) -> None:
        self.train, self.test = train, test
        n_train = len(train)  # type: ignore[arg-type]
        if spec.kind == "distill":
            assert targets.train_probs is not None
            soft = apply_temperature(targets.train_probs, spec.tau)
            weights = (float(spec.alpha), 1.0 - float(spec.alpha))
        else:
            soft, weights = np.zeros((n_train, num_classes)), (0.0, 1.0)
        test_soft = apply_temperature(targets.test_probs, spec.tau) if test is not None else np.zeros((0, num_classes))
        if spec.kind == "pseudo" and spec.targets == "hard":
            test_soft = np.eye(num_classes)[test_soft.argmax(axis=1)]
        self.soft = torch.as_tensor(np.concatenate([soft, test_soft]), dtype=torch.float32)
        self.weights = [weights] * n_train + [(1.0, 0.0)] * len(test_soft)
        self.transform = getattr(train, "transform", None)  # the worker seeding finds the augmentation here

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n_train = len(self.train)  # type: ignore[arg-type]
        item = dict(self.train[i] if i < n_train else self.test[i - n_train])  # type: ignore[index]
        if i >= n_train:
            item["target"] = -1  # no label: the hard term's weight is 0
        soft_w, hard_w = self.weights[i]
        return {**item, "soft": self.soft[i], "soft_w": soft_w, "hard_w": hard_w}


def teacher_loss(logits: torch.Tensor, batch: dict[str, Any], temperature: float) -> torch.Tensor:
    """Mean over the batch of ``soft_w · T² · CE(softmax(z / T), soft) + hard_w · CE(z, target)``."""
    logits = logits.float()
    soft = -(batch["soft"] * F.log_softmax(logits / temperature, dim=-1)).sum(-1) * temperature**2
    target = batch["target"]
    hard = F.cross_entropy(logits, target.clamp(min=0), reduction="none") * (target >= 0)
    return (batch["soft_w"].float() * soft + batch["hard_w"].float() * hard).mean()
