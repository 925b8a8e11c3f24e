"""``pipeline-train``: train one ensemble member and write its member folder.

``train(cfg)`` does the work and is what tests call; ``main`` is the Hydra entry point. A sweep
(``pipeline-train -m ...``) calls ``main`` once per member, wherever the launcher runs it.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from torch.utils.data import DataLoader

from pipeline.augment import resolve_normalization, transform_to_dict
from pipeline.config import CONF_DIR, config_hash, register, to_container, to_dataclass
from pipeline.data import DataSpec, ImageDataset, ImageTable, load_or_create_folds, read_train_table, split_indices, verify_images
from pipeline.export import export_member
from pipeline.finetune import BackboneFreeze
from pipeline.loggers import LoggerSpec, create_lightning_logger, init_wandb
from pipeline.member import MANIFEST, MemberManifest, member_status, read_manifest, write_manifest
from pipeline.models import check_input_size, create_model, model_data_config
from pipeline.module import ClassifierModule
from pipeline.predictions import write_predictions
from pipeline.utils import read_json, write_json

__all__ = ["train", "main", "MEMBER_KEYS"]

log = logging.getLogger(__name__)

# The config keys that define a member's result; a completed member with another hash is not "the same".
MEMBER_KEYS = ("model", "aug", "optimizer", "scheduler", "seed", "label_smoothing", "data_split", "max_epochs")


def _member_hash(cfg: DictConfig) -> str:
    view = OmegaConf.create({
        "model": to_container(cfg.model), "aug": to_container(cfg.aug), "optimizer": to_container(cfg.optimizer),
        "scheduler": to_container(cfg.get("scheduler")), "seed": cfg.seed, "label_smoothing": cfg.label_smoothing,
        "data_split": {k: cfg.data[k] for k in ("n_folds", "fold", "split_seed", "holdout_fraction", "image_size", "crop_size", "in_chans")},
        "max_epochs": cfg.trainer.max_epochs,
    })
    return config_hash(view, MEMBER_KEYS)


def _prepare_data(spec: DataSpec, sweep_dir: Path) -> tuple[ImageTable, Any]:
    """Read and check the training table and the sweep's folds, before any model is built."""
    table = read_train_table(spec)
    if spec.check_images:
        table = verify_images(table, spec.skip_bad_images)
    folds = load_or_create_folds(sweep_dir / "folds.csv", table, spec)
    return table, folds


def _loaders(cfg: DictConfig, spec: DataSpec, table: ImageTable, folds: Any) -> tuple[DataLoader, DataLoader, ImageTable]:
    train_idx, val_idx = split_indices(folds, spec.fold, spec.n_folds)
    log.info("Instantiating train/eval augmentation <%s>", cfg.aug.train._target_)
    train_tf, eval_tf = instantiate(cfg.aug.train), instantiate(cfg.aug.eval)
    val_table = table.subset(val_idx)
    common = dict(batch_size=spec.batch_size, num_workers=spec.num_workers, persistent_workers=spec.num_workers > 0)
    from pipeline.cache import cache_for_spec  # the pre-resized image cache (data.cache_dir), or None

    cache = cache_for_spec(table, spec)  # built once on the whole table; both splits read their rows from it
    train_ds = ImageDataset(table.subset(train_idx), train_tf, spec.in_chans, cache)
    train_dl = DataLoader(train_ds, shuffle=True, drop_last=True, **common)
    val_dl = DataLoader(ImageDataset(val_table, eval_tf, spec.in_chans, cache), shuffle=False, **common)
    return train_dl, val_dl, val_table


def _callbacks(cfg: DictConfig, member_dir: Path) -> list[Callback]:
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=member_dir / "checkpoints", filename="best", monitor=cfg.monitor, mode=cfg.monitor_mode,
            save_last=True, save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
        )
    ]
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=cfg.monitor, mode=cfg.monitor_mode, patience=int(cfg.early_stopping_patience)))
    if cfg.model.get("freeze_backbone_epochs", 0):
        callbacks.append(BackboneFreeze(unfreeze_at_epoch=int(cfg.model.freeze_backbone_epochs)))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    return callbacks


@torch.inference_mode()
def _predict_validation(module: ClassifierModule, loader: DataLoader, n_rows: int) -> np.ndarray:
    """Probabilities for every validation row, put back in table order by the carried row index."""
    module.eval()
    device = next(module.parameters()).device
    probs = np.zeros((n_rows, module.hparams["num_classes"]), dtype=np.float64)
    for batch in loader:
        out = module.eval_logits(batch["image"].to(device)).float().softmax(-1)
        probs[batch["index"].numpy()] = out.cpu().numpy()
    return probs


def _build_module(cfg: DictConfig, spec: DataSpec, num_classes: int) -> ClassifierModule:
    """Check the model name and input size, resolve normalisation into ``cfg.aug``, build the module."""
    m = cfg.model
    kwargs = to_container(m.get("kwargs")) or {}
    log.info("Instantiating model <timm.create_model %s>", m.name)
    probe = create_model(m.name, num_classes=num_classes, in_chans=spec.in_chans, **kwargs)
    check_input_size(probe, in_chans=spec.in_chans, size=spec.crop_size)
    mean, std = resolve_normalization(model_data_config(probe), spec.in_chans, cfg.aug.get("mean"), cfg.aug.get("std"))
    del probe
    with open_dict(cfg):
        cfg.aug.mean, cfg.aug.std = mean, std
    return ClassifierModule(
        model_name=m.name, num_classes=num_classes, in_chans=spec.in_chans, crop_size=spec.crop_size, mean=mean, std=std,
        pretrained=bool(m.get("pretrained", False)), weights=m.get("weights"), model_kwargs=kwargs,
        label_smoothing=float(cfg.label_smoothing), optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") and "_target_" in cfg.scheduler else None,
        head_lr=m.get("head_lr"), layer_decay=m.get("layer_decay"),
    )


def _manifest(cfg: DictConfig, spec: DataSpec, classes: list[str], module: ClassifierModule, digest: str) -> MemberManifest:
    member_name = str(cfg.member_name)
    return MemberManifest(
        name=member_name, model_name=str(cfg.model.name), num_classes=len(classes), in_chans=spec.in_chans,
        classes=classes, image_size=spec.image_size, crop_size=spec.crop_size, mean=module.mean, std=module.std,
        n_folds=spec.n_folds, fold=spec.fold, seed=int(cfg.seed), split_seed=spec.split_seed, config_hash=digest,
        model_kwargs=to_container(cfg.model.get("kwargs")) or {}, sweep=f"{cfg.experiment_name}/{cfg.sweep_name}",
        model_group=member_name.rsplit("-", 1)[0],
    )


def _existing(member_dir: Path, digest: str, overwrite: bool) -> dict[str, float] | None:
    """Metrics of an already completed identical member (skip it), else None; refuse a clash."""
    status = member_status(member_dir)
    if status == "missing":
        return None
    manifest = read_manifest(member_dir)
    if manifest.config_hash != digest and not overwrite:
        raise ValueError(
            f"Member folder {member_dir} holds a member trained with a different config (hash {manifest.config_hash} "
            f"!= {digest}). Use another sweep_name, or overwrite=true to retrain it."
        )
    if status == "completed" and manifest.config_hash == digest:
        log.info("Member %s is already completed; skipping it.", member_dir)
        metrics: dict[str, float] = read_json(member_dir / "metrics.json")
        return metrics
    return None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one member as configured and write its member folder; return its metrics.

    Re-running with the same config skips a completed member and resumes an interrupted one from
    ``checkpoints/last.ckpt``.
    """
    start = time.time()
    member_dir = Path(cfg.paths.output_dir)
    spec = to_dataclass(DataSpec, cfg.data)
    pl.seed_everything(int(cfg.seed), workers=True)
    table, folds = _prepare_data(spec, member_dir.parent)
    module = _build_module(cfg, spec, len(table.classes))
    digest = _member_hash(cfg)  # after normalisation is resolved, so a saved config.yaml hashes the same
    done = _existing(member_dir, digest, bool(cfg.get("overwrite", False)))
    if done is not None:
        return done
    manifest = _manifest(cfg, spec, table.classes, module, digest)
    train_dl, val_dl, val_table = _loaders(cfg, spec, table, folds)

    member_dir.mkdir(parents=True, exist_ok=True)
    (member_dir / "error.txt").unlink(missing_ok=True)
    OmegaConf.save(cfg, member_dir / "config.yaml", resolve=True)
    write_json(member_dir / "classes.json", table.classes)
    folds.to_csv(member_dir / "folds.csv", index=False)
    write_json(member_dir / "eval_transform.json", transform_to_dict(val_dl.dataset.transform))
    trainer_rank = 0
    logger_spec = to_dataclass(LoggerSpec, cfg.logger)
    run = None
    try:
        if logger_spec.kind == "wandb":
            run = init_wandb(logger_spec, member_dir, manifest.name, manifest.sweep, "train", to_container(cfg))
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=_callbacks(cfg, member_dir), logger=create_lightning_logger(logger_spec, member_dir, run),
            default_root_dir=str(member_dir),
        )
        trainer_rank = trainer.global_rank
        if trainer_rank == 0:
            write_manifest(member_dir, manifest)
        last = member_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("Resuming %s from %s", manifest.name, last)
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
        if trainer_rank != 0:
            return {}
        return _finish(trainer, module, member_dir, val_dl, val_table, manifest, start, run)
    finally:
        if run is not None:
            run.finish()


def _finish(
    trainer: pl.Trainer, module: ClassifierModule, member_dir: Path, val_dl: DataLoader, val_table: ImageTable,
    manifest: MemberManifest, start: float, run: Any,
) -> dict[str, float]:
    """Reload the best checkpoint, save validation predictions and metrics, mark the member completed."""
    ckpt_cb = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))  # type: ignore[attr-defined]
    best = Path(ckpt_cb.best_model_path or member_dir / "checkpoints" / "last.ckpt")
    if best.name != "best.ckpt":  # no monitored value was ever logged (e.g. no validation): keep the last weights
        best = member_dir / "checkpoints" / "best.ckpt"
        trainer.save_checkpoint(best, weights_only=False)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.to(trainer.strategy.root_device)
    probs = _predict_validation(module, val_dl, len(val_table))
    write_predictions(member_dir / "val_predictions.csv", val_table.ids, probs, manifest.classes, val_table.labels)
    assert val_table.labels is not None
    acc = float((probs.argmax(1) == val_table.labels).mean())
    log_loss = float(-np.log(np.clip(probs[np.arange(len(probs)), val_table.labels], 1e-15, 1)).mean())
    metrics = {
        "monitor": str(ckpt_cb.monitor), "best_score": float(ckpt_cb.best_model_score or float("nan")),
        "epochs": int(trainer.current_epoch), "wall_time_s": round(time.time() - start, 2),
        "val_acc": acc, "val_log_loss": log_loss, "n_val": len(val_table),
    }
    write_json(member_dir / "metrics.json", metrics)
    if run is not None:
        run.summary.update({"best/val_acc": acc, "best/val_log_loss": log_loss})
    manifest.status = "completed"
    write_manifest(member_dir, manifest)  # export reads the manifest; the status is final only if export works
    try:
        export_member(member_dir)
    except Exception:
        manifest.status = "failed"
        write_manifest(member_dir, manifest)
        raise
    log.info("Member %s completed: val_acc=%.4f val_log_loss=%.4f → %s", manifest.name, acc, log_loss, member_dir)
    return metrics  # type: ignore[return-value]


def record_failure(member_dir: Path, err: BaseException) -> None:
    """Mark a member failed, keeping the exception and traceback in ``error.txt``."""
    member_dir.mkdir(parents=True, exist_ok=True)
    (member_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
    if (member_dir / MANIFEST).is_file():
        manifest = read_manifest(member_dir)
        manifest.status = "failed"
        write_manifest(member_dir, manifest)


register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> dict[str, float]:
    """Hydra entry point ``pipeline-train``."""
    try:
        return train(cfg)
    except Exception as err:
        record_failure(Path(cfg.paths.output_dir), err)
        raise


if __name__ == "__main__":
    main()
