"""The Lightning logger for a member: W&B (the run :func:`pipeline.core.tracking.init_wandb` started), CSV, or none.

Also what goes to W&B beyond scalars: a grid of augmented training images (:func:`log_sample_grid`) and the
completed member's weights and OOF predictions as artifacts (:func:`log_member_artifacts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.core.tracking import LoggerSpec, log_files_artifact
from pipeline.member.manifest import MemberManifest
from pipeline.member.weights import META, WEIGHTS

__all__ = ["create_lightning_logger", "sample_grid", "log_sample_grid", "log_member_artifacts", "member_tags",
           "SAMPLES_KEY"]

SAMPLES_KEY = "train/samples"
"""The W&B key of the grid of augmented training images (first batch of the first epoch)."""


def member_tags(manifest: MemberManifest) -> list[str]:
    """A member run's tags beyond ``logger.tags``: the experiment (the sweep's first part), the model, the task kind.

    A member recorded without a task predicts one class per image: multiclass.
    """
    return [manifest.sweep.split("/")[0], manifest.model_name, str((manifest.task or {}).get("kind", "multiclass"))]


def create_lightning_logger(spec: LoggerSpec, run_dir: Path, wandb_run: Any | None) -> Any:
    """The Lightning logger for ``spec.kind`` (``False`` for none)."""
    if spec.kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        return WandbLogger(experiment=wandb_run, save_dir=str(run_dir))
    if spec.kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv_logs", version="")
    if spec.kind == "none":
        return False
    raise ValueError(f"logger.kind='{spec.kind}' is not one of: wandb, csv, none.")


def sample_grid(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], n: int = 32) -> torch.Tensor:
    """A ``uint8`` HWC grid of the first ``n`` normalised CHW ``images``, de-normalised to what the network saw.

    One channel is shown grey, three as RGB; other channel counts show their first channel (or first three).
    """
    from torchvision.utils import make_grid

    batch = images[:n].detach().float().cpu()
    m = torch.tensor(list(mean), dtype=batch.dtype).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=batch.dtype).view(1, -1, 1, 1)
    batch = (batch * s + m).clamp(0, 1)
    batch = batch[:, :3] if batch.shape[1] >= 3 else batch[:, :1]
    grid = make_grid(batch, nrow=8, padding=2, pad_value=1.0)  # 1 channel → 3 identical channels
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def log_sample_grid(logger: Any, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], step: int) -> bool:
    """Log :func:`sample_grid` of ``images`` under :data:`SAMPLES_KEY` when ``logger`` is W&B's; True if logged."""
    from pytorch_lightning.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return False
    grid = sample_grid(images, mean, std).numpy()
    caption = f"{min(len(images), 32)} training images after augmentation"
    logger.log_image(key=SAMPLES_KEY, images=[grid], step=step, caption=[caption])
    return True


def log_member_artifacts(run: Any, member_dir: Path, manifest: MemberManifest,
                         metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Log a completed member's ``model.safetensors`` (+ ``model.json``) and ``val_predictions.csv`` to ``run``.

    Artifacts ``model-<sweep>-<member>`` (type ``model``, with the member's metrics as metadata) and
    ``oof-<sweep>-<member>`` (type ``predictions``), each aliased ``latest``; ``/`` in the sweep becomes ``-``.

    Returns:
        ``{"model": ..., "oof": ...}``: what :func:`pipeline.core.tracking.log_files_artifact` returned for each
        artifact logged, for ``runtime.json``'s ``wandb_artifacts`` (from which the predict run declares the
        model artifact its input).
    """
    name, sweep = manifest.name, manifest.sweep
    tag = f"{sweep}-{name}".replace("/", "-")
    meta = {"member": name, "sweep": sweep, **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
    weights = [member_dir / WEIGHTS, member_dir / META]
    logged = {"model": log_files_artifact(run, f"model-{tag}", "model", weights, meta),
              "oof": log_files_artifact(run, f"oof-{tag}", "predictions", [member_dir / "val_predictions.csv"], meta)}
    return {kind: record for kind, record in logged.items() if record is not None}
