"""The Lightning logger for a member: W&B (the run :func:`pipeline.core.tracking.init_wandb` started), CSV, or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.tracking import LoggerSpec

__all__ = ["create_lightning_logger"]


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
