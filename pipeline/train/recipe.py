"""A member's training recipe: loss, Mixup/CutMix, precision; checked before training, recorded in ``member.json``.

The default recipe is what members always had: hard-label cross-entropy (``label_smoothing`` as before), no
mixing, per-epoch schedules, ``32-true`` on the CPU, one batch per optimiser step. Each other choice is
opt-in from the config:

- ``loss``: ``cross_entropy`` (hard labels) or ``soft_target_cross_entropy`` (``timm.loss.SoftTargetCrossEntropy``),
  which Mixup/CutMix need. Validation scores hard labels either way.
- ``aug.mixup`` / ``aug.cutmix`` (+ ``aug.mixup_prob``, ``aug.mixup_switch_prob``, ``aug.mixup_mode``):
  ``timm.data.Mixup`` on each training batch; ``label_smoothing`` then goes through Mixup's targets.
- ``trainer.precision=auto-mixed``: ``bf16-mixed`` where the GPU computes bfloat16 natively, ``16-mixed``
  (with a grad scaler) on older GPUs (T4, P100), ``32-true`` without CUDA (:func:`resolve_precision`).
- Per-step schedules with warmup: :mod:`pipeline.train.schedules`.

>>> resolve_precision("auto-mixed", "gpu", cuda=True, bf16=False)
'16-mixed'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from pipeline.core.errors import ConfigError
from pipeline.member.manifest import Recipe
from pipeline.member.teacher import TeacherSpec
from pipeline.train.averaging import describe_averaging
from pipeline.train.schedules import check_warmup, schedule_interval
from pipeline.train.spec import LOSS_NAMES, MixupSpec, TrainSpec

__all__ = [
    "AUTO_MIXED", "MIXUP_KEYS", "SOFT_TARGET_LOSSES", "training_loss", "create_mixup", "resolve_precision",
    "check_recipe", "check_run_length", "check_ema_horizon", "describe_recipe", "recipe_identity", "aug_identity",
]

AUTO_MIXED = "auto-mixed"
"""``trainer.precision`` value resolved here, before the Trainer is built (:func:`resolve_precision`)."""

MIXUP_KEYS = tuple(f.name for f in dataclasses.fields(MixupSpec))
"""The ``aug`` config keys of Mixup/CutMix."""

SOFT_TARGET_LOSSES = ("soft_target_cross_entropy",)
"""Losses that take the soft targets Mixup/CutMix make."""

MIXUP_MODES = ("batch", "pair", "elem")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float,
                               num_classes: int) -> torch.Tensor:
    if target.ndim == 1:  # hard labels (a batch Mixup left alone, or no Mixup): smoothed one-hot targets
        target = mixup_target(target, num_classes, smoothing=label_smoothing)
    return SoftTargetCrossEntropy()(logits, target)


def training_loss(name: str, label_smoothing: float, num_classes: int) -> LossFn:
    """The training loss ``name`` as ``fn(logits, targets)``; targets are class indices or, for a soft-target
    loss, per-class probabilities (class indices are then smoothed one-hot vectors).

    ``cross_entropy`` is ``F.cross_entropy(logits, target, label_smoothing=...)``, exactly the loss members
    always trained with.
    """
    if name == "cross_entropy":
        return partial(F.cross_entropy, label_smoothing=label_smoothing)
    if name == "soft_target_cross_entropy":
        return partial(_soft_target_cross_entropy, label_smoothing=label_smoothing, num_classes=num_classes)
    raise ConfigError(f"loss={name!r} is not a training loss; accepted: {', '.join(LOSS_NAMES)}.")


def create_mixup(settings: dict[str, Any] | None, label_smoothing: float, num_classes: int) -> Mixup | None:
    """``timm.data.Mixup`` for the ``aug`` settings (a :class:`MixupSpec` as a dict), or None when mixing is off."""
    spec = MixupSpec(**settings) if settings else None
    if spec is None or not spec.enabled:
        return None
    return Mixup(mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix, prob=spec.mixup_prob,
                 switch_prob=spec.mixup_switch_prob, mode=spec.mixup_mode, label_smoothing=label_smoothing,
                 num_classes=num_classes)


def resolve_precision(precision: Any, accelerator: Any = "auto", *, cuda: bool | None = None,
                      bf16: bool | None = None) -> str:
    """The Lightning precision for ``trainer.precision``: ``auto-mixed`` resolved, any other value as given.

    ``auto-mixed`` is ``bf16-mixed`` on a CUDA GPU that computes bfloat16 natively (compute capability 8.0 or
    more: A100, H100, L4…), ``16-mixed`` on older ones (T4, V100, P100: torch emulates bfloat16 there, and
    ``torch.cuda.is_bf16_supported()`` says True unless asked for native support), and ``32-true``
    without CUDA or with ``accelerator=cpu``.

    Args:
        precision: ``trainer.precision``; None is Lightning's default, ``32-true``.
        accelerator: ``trainer.accelerator``.
        cuda: Whether CUDA is there (None: ask torch). For tests of the GPU branch on a machine without one.
        bf16: Whether the GPU computes bfloat16 natively (None: ask torch).
    """
    if precision is None:
        return "32-true"
    if precision != AUTO_MIXED:
        return str(precision)
    on_cuda = str(accelerator) in ("auto", "gpu", "cuda") and (torch.cuda.is_available() if cuda is None else cuda)
    if not on_cuda:
        return "32-true"
    native = torch.cuda.is_bf16_supported(including_emulation=False) if bf16 is None else bf16
    return "bf16-mixed" if native else "16-mixed"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_mixup(mix: MixupSpec, loss: str, batch_size: Any) -> None:
    for key in ("mixup", "cutmix"):
        value = getattr(mix, key)
        if not _number(value) or value < 0:
            raise ConfigError(f"aug.{key}={value!r}: accepted: an alpha ≥ 0 (0 turns it off; timm's recipe: "
                              "mixup 0.8, cutmix 1.0).")
    for key in ("mixup_prob", "mixup_switch_prob"):
        value = getattr(mix, key)
        if not _number(value) or not 0 <= value <= 1:
            raise ConfigError(f"aug.{key}={value!r}: accepted: a probability in [0, 1].")
    if mix.mixup_mode not in MIXUP_MODES:
        raise ConfigError(f"aug.mixup_mode={mix.mixup_mode!r}: accepted: {', '.join(MIXUP_MODES)}.")
    if not mix.enabled:
        return
    key = "aug.mixup" if mix.mixup > 0 else "aug.cutmix"
    if loss not in SOFT_TARGET_LOSSES:
        raise ConfigError(
            f"{key}={getattr(mix, key[4:])} makes soft targets, which loss={loss} cannot take (it trains on hard "
            f"labels). Set loss to one that takes soft targets: {', '.join(SOFT_TARGET_LOSSES)}."
        )
    if isinstance(batch_size, int) and batch_size % 2:
        raise ConfigError(f"data.batch_size={batch_size} is odd: with {key} on, timm mixes each image with the "
                          "batch's mirror image, so the batch size must be even.")


def check_recipe(spec: TrainSpec) -> None:
    """Refuse, before training, a recipe that cannot train: each message names the key and what is accepted.

    Raises:
        ConfigError: an unknown ``loss``; ``label_smoothing`` outside [0, 1); Mixup/CutMix alphas below 0,
            probabilities outside [0, 1], an unknown mode, a loss without soft targets, an odd batch size;
            ``trainer.accumulate_grad_batches`` below 1; a warmup not shorter than ``trainer.max_epochs``.
    """
    if spec.loss not in LOSS_NAMES:
        raise ConfigError(f"loss={spec.loss!r} is not a training loss; accepted: {', '.join(LOSS_NAMES)}.")
    if not _number(spec.label_smoothing) or not 0 <= spec.label_smoothing < 1:
        raise ConfigError(f"label_smoothing={spec.label_smoothing!r}: accepted: a number in [0, 1).")
    _check_mixup(spec.mixup or MixupSpec(), spec.loss, spec.data.batch_size)
    settings = spec.trainer_settings
    accumulate = settings.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r}: accepted: an integer ≥ 1 (batches whose "
                          "gradients are summed into one optimiser step).")
    warmup = _warmup_settings(spec)
    if warmup is not None:
        check_warmup(warmup.get("warmup_epochs"), warmup.get("warmup_steps"), max_epochs=settings.get("max_epochs"))


def _warmup_settings(spec: TrainSpec) -> dict[str, Any] | None:
    """The configured per-step schedule's warmup keywords; None without one (a snapshot run replaces it)."""
    factory = spec.scheduler
    if factory is None or spec.snapshots or schedule_interval(factory) != "step":
        return None
    keywords = dict(getattr(factory, "keywords", None) or {})
    return {k: keywords.get(k) for k in ("warmup_epochs", "warmup_steps")}


def _steps(n_train: int, batch_size: int, settings: dict[str, Any]) -> tuple[int, int | None]:
    """Optimiser steps per epoch and in the run, as Lightning will count them (an estimate under DDP)."""
    devices, nodes = settings.get("devices"), settings.get("num_nodes") or 1
    world = devices * nodes if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 else 1
    batches = math.ceil(n_train / world) // batch_size  # the training loader drops an incomplete last batch
    limit = settings.get("limit_train_batches")
    if isinstance(limit, float):
        batches = int(batches * limit)
    elif isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    per_epoch = math.ceil(batches / int(settings.get("accumulate_grad_batches") or 1))
    epochs, max_steps = settings.get("max_epochs"), settings.get("max_steps")
    total = per_epoch * epochs if isinstance(epochs, int) and epochs > 0 else None
    if isinstance(max_steps, int) and max_steps > 0:
        total = max_steps if total is None else min(total, max_steps)
    return per_epoch, total


def check_run_length(spec: TrainSpec, n_train: int) -> None:
    """Refuse, once the training rows are known, a warmup not shorter than the run's optimiser steps.

    The schedule checks the Trainer's own count again when it is built (:class:`~pipeline.train.schedules.WarmupCosine`).

    Raises:
        ConfigError: naming ``scheduler.warmup_steps`` (or ``warmup_epochs``) and the run's steps.
    """
    per_epoch, total = _steps(n_train, int(spec.data.batch_size), spec.trainer_settings)
    if total is None:
        return
    warmup = _warmup_settings(spec)
    if warmup is not None:
        check_warmup(warmup["warmup_epochs"], warmup["warmup_steps"], total_steps=total, steps_per_epoch=per_epoch)
    for callback in spec.callbacks or []:
        ema = (describe_averaging(callback) or {}).get("ema")
        if ema is not None:
            check_ema_horizon(float(ema["decay"]), int(ema["every"] or 1), int(ema["from_step"] or 0), total)


EMA_FIRST_WEIGHT = 0.05
"""The largest share of an EMA that the first update's weights may still hold at the end of the run."""


def check_ema_horizon(decay: float, every: int, from_step: int, total_steps: int) -> None:
    """Refuse an EMA whose average, at the end of the run, would still be mostly the first update's weights.

    After ``n`` updates the first one's weights hold ``decay ** n`` of the average: 0.999 over 80 steps
    leaves 92 % of it, and validation, ``best.ckpt`` and the exported model would hold an untrained network
    (benchmarks/RESULTS.md, recipes: test accuracy 0.10–0.40 instead of 0.96).

    Raises:
        ConfigError: naming ``callbacks.ema.decay``, the run's updates, and the largest decay that fits.
    """
    updates = max(0, total_steps - from_step) // max(1, every)
    left = decay**updates
    if left <= EMA_FIRST_WEIGHT:
        return
    fits = f"decay ≤ {EMA_FIRST_WEIGHT ** (1 / updates):.4f}" if updates else "an EMA that starts within the run"
    raise ConfigError(
        f"callbacks.ema.decay={decay} averages over about {1 / (1 - decay):.0f} updates (1/(1 − decay)), but this run "
        f"makes {updates} ({total_steps} optimiser steps): at its end {left:.0%} of the average would still be the first "
        f"update's weights, and validation, best.ckpt and the exported model hold the average. Accepted for this run: "
        f"{fits} (decay^updates ≤ {EMA_FIRST_WEIGHT}), or a longer run.")


def _target_name(factory: Any) -> str | None:
    if factory is None:
        return None
    target = getattr(factory, "func", factory)
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}"


def describe_recipe(spec: TrainSpec, scheduler: Any) -> Recipe:
    """The member's :class:`~pipeline.member.manifest.Recipe`, with ``scheduler`` the factory the module uses."""
    settings = spec.trainer_settings
    interval = schedule_interval(scheduler) if scheduler is not None else "epoch"
    warmup = None
    if interval == "step":
        keywords = getattr(scheduler, "keywords", None) or {}
        steps = keywords.get("warmup_steps")
        warmup = {"steps": steps} if steps is not None else {"epochs": keywords.get("warmup_epochs", 0.0)}
    mix = spec.mixup if spec.mixup is not None and spec.mixup.enabled else None
    return Recipe(
        loss=spec.loss, label_smoothing=float(spec.label_smoothing),
        mixup=dataclasses.asdict(mix) if mix is not None else None, scheduler=_target_name(scheduler),
        scheduler_interval=interval, warmup=warmup,
        precision=resolve_precision(settings.get("precision", "32-true"), settings.get("accelerator", "auto")),
        accumulate_grad_batches=int(settings.get("accumulate_grad_batches") or 1),
        averaging=[d for c in spec.callbacks or [] if (d := describe_averaging(c)) is not None],
        snapshots=int(spec.snapshots),
        teacher=None if spec.teacher is None else dataclasses.asdict(spec.teacher),
    )


def recipe_identity(spec: TrainSpec) -> dict[str, Any]:
    """What of the recipe changes a member's result beyond the hash's other keys, only where it differs from the
    default, so every member trained without it keeps its config hash."""
    extra: dict[str, Any] = {}
    if spec.loss not in ("cross_entropy", "auto"):  # auto is resolved before training (the task's loss)
        extra["loss"] = spec.loss
    if spec.mixup is not None and spec.mixup.enabled:
        extra["mixup"] = dataclasses.asdict(spec.mixup)
    accumulate = int(spec.trainer_settings.get("accumulate_grad_batches") or 1)
    if accumulate != 1:
        extra["accumulate_grad_batches"] = accumulate
    return extra


def teacher_identity(spec: TeacherSpec) -> dict[str, object]:
    """What of a teacher defines the member's result: its kind, source contents and the settings it uses."""
    keep: dict[str, object] = {"kind": spec.kind, "digest": spec.digest, "threshold": float(spec.threshold)}
    if spec.kind == "distill":
        keep.update(temperature=float(spec.temperature), alpha=float(spec.alpha), test_rows=bool(spec.test_rows))
    else:
        keep["targets"] = spec.targets
    return keep


def aug_identity(aug: Any) -> Any:
    """The ``aug`` config without its Mixup/CutMix keys, which enter the hash through :func:`recipe_identity`."""
    return {k: v for k, v in aug.items() if k not in MIXUP_KEYS} if isinstance(aug, dict) else aug
