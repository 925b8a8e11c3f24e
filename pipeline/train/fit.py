"""Train one ensemble member and write its member folder: :func:`train_member`.

Re-running with the same spec skips a completed member and resumes an interrupted one from its newest
checkpoint. With several devices (DDP) only rank 0 writes the folder and its W&B run.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from pipeline.core.io import atomic_path, check_writable_dir, clean_stale_temps, read_json, short_hash, write_json
from pipeline.core.tracking import init_wandb
from pipeline.data.augment import resolve_normalization, transform_to_dict
from pipeline.data.cache import cache_for_spec
from pipeline.data.dataset import ImageDataset
from pipeline.data.decode import verify_images
from pipeline.data.folds import check_fold_index, resolve_folds, save_folds, split_indices
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_train_table
from pipeline.member.manifest import MemberManifest, mark_failed, write_manifest
from pipeline.member.predictions import write_predictions
from pipeline.member.weights import export_member
from pipeline.models.factory import check_input_size, create_model, model_data_config
from pipeline.models.finetune import BackboneFreeze
from pipeline.train.checks import ProgressGuard, check_progress, check_split_sizes, check_trainer_settings
from pipeline.train.ddp import distributed_scope, fit_other_rank
from pipeline.train.loggers import create_lightning_logger
from pipeline.train.module import ClassifierModule, optimizer_lr
from pipeline.train.spec import TrainSpec
from pipeline.train.state import MemberConflict, MemberPlan, clear_member, plan_member
from pipeline.train.sweep import RUNTIME, in_ray_task, limit_threads_to_assigned_cpus, runtime_info

__all__ = ["train_member", "MemberConflict", "MEMBER_KEYS", "member_hash"]

log = logging.getLogger(__name__)


# The config keys that define a member's result; a completed member with another hash is not "the same".
MEMBER_KEYS = ("model", "aug", "optimizer", "scheduler", "seed", "label_smoothing", "data_split", "max_epochs")
_SPLIT_KEYS = ("n_folds", "fold", "split_seed", "holdout_fraction", "image_size", "crop_size", "in_chans")


def _describe(factory: Any) -> Any:
    """A plain record of a ``functools.partial`` factory: its target and keywords (for hashes and config.yaml)."""
    if factory is None:
        return None
    if isinstance(factory, functools.partial):
        target = f"{factory.func.__module__}.{factory.func.__qualname__}"
        return {"_target_": target, "_partial_": True, **factory.keywords}
    return {"_target_": f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', repr(factory))}"}


def _record(spec: TrainSpec, mean: list[float], std: list[float]) -> dict[str, Any]:
    """The member's config as plain containers, with the resolved normalisation: ``spec.config`` or the specs."""
    if spec.config is not None:
        config = {**spec.config}
        config["aug"] = {**(config.get("aug") or {}), "mean": mean, "std": std}
        return config
    return {
        "model": asdict(spec.model), "data": asdict(spec.data), "aug": {"mean": mean, "std": std},
        "optimizer": _describe(spec.optimizer), "scheduler": _describe(spec.scheduler), "trainer": spec.trainer_settings,
        "seed": spec.seed, "label_smoothing": spec.label_smoothing, "monitor": spec.monitor,
    }


def member_hash(spec: TrainSpec, config: dict[str, Any]) -> str:
    """Short hash of what defines a member's result (:data:`MEMBER_KEYS`)."""
    view = {
        "model": config.get("model"), "aug": config.get("aug"), "optimizer": config.get("optimizer"),
        "scheduler": config.get("scheduler"), "seed": spec.seed, "label_smoothing": spec.label_smoothing,
        "data_split": {k: getattr(spec.data, k) for k in _SPLIT_KEYS},
        "max_epochs": spec.trainer_settings.get("max_epochs"),
    }
    return short_hash({k: view[k] for k in MEMBER_KEYS}, 16)


def _fold_name(spec: DataSpec) -> str:
    return f"fold {spec.fold} of {spec.n_folds}" if spec.n_folds >= 2 else "the holdout split"


def _prepare_data(spec: DataSpec, table: ImageTable, sweep_dir: Path) -> tuple[ImageTable, Any, bool]:
    """Check the training table's images and the sweep's folds (new ones are not written yet).

    Images are verified once per data set: the result is recorded in the sweep folder
    (:func:`~pipeline.data.decode.verify_images`), so the sweep's other members do not decode them again.

    Returns:
        The table, the folds, and whether the folds are new (to be saved once every check has passed).
    """
    if spec.check_images:
        table = verify_images(table, spec.skip_bad_images, spec.num_workers, sweep_dir)
    folds, new = resolve_folds(sweep_dir / "folds.csv", table, spec)
    train_idx, val_idx = split_indices(folds, spec.fold, spec.n_folds)
    check_split_sizes(len(train_idx), len(val_idx), spec.batch_size, _fold_name(spec))
    return table, folds, new


def _seed_augmentation(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline: 2.x draws from its own generators, seeded from OS entropy by default."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _augmentation_worker_init(worker_id: int) -> None:
    """Lightning's per-worker seeding, plus a distinct augmentation stream per worker (copies would repeat it)."""
    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        _seed_augmentation(getattr(info.dataset, "transform", None), torch.initial_seed() % 2**32)


def _loaders(
    spec: TrainSpec, table: ImageTable, folds: Any, mean: list[float], std: list[float]
) -> tuple[DataLoader, DataLoader, ImageTable]:
    data = spec.data
    train_idx, val_idx = split_indices(folds, data.fold, data.n_folds)
    train_tf, eval_tf = spec.transforms(mean, std)
    log.info("Instantiating train/eval augmentation <%s>", type(train_tf).__name__)
    _seed_augmentation(train_tf, int(spec.seed))
    val_table = table.subset(val_idx)
    common: dict[str, Any] = dict(
        batch_size=data.batch_size, num_workers=data.num_workers, persistent_workers=data.num_workers > 0
    )
    cache = cache_for_spec(table, data)  # built once on the whole table; both splits read their rows from it
    train_ds = ImageDataset(table.subset(train_idx), train_tf, data.in_chans, cache)
    init = _augmentation_worker_init if data.num_workers > 0 else None
    train_dl = DataLoader(train_ds, shuffle=True, drop_last=True, worker_init_fn=init, **common)
    val_dl = DataLoader(ImageDataset(val_table, eval_tf, data.in_chans, cache), shuffle=False, **common)
    return train_dl, val_dl, val_table


def _callbacks(spec: TrainSpec) -> list[Callback]:
    callbacks: list[Callback] = [
        ProgressGuard(),
        ModelCheckpoint(
            dirpath=Path(spec.member_dir) / "checkpoints", filename="best", monitor=spec.monitor,
            mode=spec.monitor_mode, save_last=True, save_top_k=1, auto_insert_metric_name=False,
            enable_version_counter=False,
        )
    ]
    if spec.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=spec.monitor, mode=spec.monitor_mode, patience=int(spec.early_stopping_patience)))
    if spec.model.freeze_backbone_epochs:
        callbacks.append(BackboneFreeze(unfreeze_at_epoch=int(spec.model.freeze_backbone_epochs)))
    if spec.trainer_settings.get("enable_progress_bar", True):
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


def _build_module(spec: TrainSpec, num_classes: int) -> ClassifierModule:
    """Check the model name and input size, resolve normalisation, build the module."""
    m, data = spec.model, spec.data
    kwargs = dict(m.kwargs or {})
    log.info("Instantiating model <timm.create_model %s>", m.name)
    probe = create_model(m.name, num_classes=num_classes, in_chans=data.in_chans, **kwargs)
    check_input_size(probe, in_chans=data.in_chans, size=data.crop_size)
    mean, std = resolve_normalization(model_data_config(probe), data.in_chans, spec.aug_mean, spec.aug_std)
    del probe
    return ClassifierModule(
        model_name=m.name, num_classes=num_classes, in_chans=data.in_chans, crop_size=data.crop_size, mean=mean,
        std=std, pretrained=bool(m.pretrained), weights=m.weights, model_kwargs=kwargs,
        label_smoothing=float(spec.label_smoothing), optimizer=spec.optimizer, scheduler=spec.scheduler,
        head_lr=m.head_lr, layer_decay=m.layer_decay,
    )


def _manifest(spec: TrainSpec, classes: list[str], module: ClassifierModule, digest: str) -> MemberManifest:
    data, name = spec.data, spec.member_name
    return MemberManifest(
        name=name, model_name=spec.model.name, num_classes=len(classes), in_chans=data.in_chans,
        classes=classes, image_size=data.image_size, crop_size=data.crop_size, mean=module.mean, std=module.std,
        n_folds=data.n_folds, fold=data.fold, seed=int(spec.seed), split_seed=data.split_seed, config_hash=digest,
        model_kwargs=dict(spec.model.kwargs or {}), sweep=spec.sweep, model_group=name.rsplit("-", 1)[0],
        data={**asdict(data), "root": str(data.root_path.resolve())},
    )


def _write_setup(member_dir: Path, config: dict[str, Any], table: ImageTable, folds: Any, val_dl: DataLoader) -> None:
    """The member folder's files that do not depend on training: config, classes, folds, eval transform."""
    member_dir.mkdir(parents=True, exist_ok=True)
    (member_dir / "error.txt").unlink(missing_ok=True)
    with atomic_path(member_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_json(member_dir / "classes.json", table.classes)
    save_folds(member_dir / "folds.csv", folds)
    write_json(member_dir / "eval_transform.json", transform_to_dict(cast(ImageDataset, val_dl.dataset).transform))


def _process_rank() -> int:
    """This process's rank, from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID) before any Trainer."""
    return int(getattr(rank_zero_only, "rank", 0))


def _trainer_overrides(spec: TrainSpec) -> dict[str, Any]:
    """Trainer arguments that depend on where the member runs rather than on its config."""
    extra: dict[str, Any] = {}
    if SLURMEnvironment.detect():
        # Lightning's auto-requeue: on the requeue signal it saves an hpc checkpoint and requeues the job.
        extra["plugins"] = [SLURMEnvironment(auto_requeue=True)]
    settings = spec.trainer_settings
    accelerator = str(settings.get("accelerator", "auto"))
    if settings.get("sync_batchnorm") and (accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())):
        log.info("trainer.sync_batchnorm needs CUDA (torch's SyncBatchNorm); on CPU each process keeps its own statistics.")
        extra["sync_batchnorm"] = False
    return extra


def _record_runtime(member_dir: Path, **fields: Any) -> None:
    path = member_dir / RUNTIME
    info = read_json(path) if path.is_file() else {}
    write_json(path, {**info, **fields})


def train_member(spec: TrainSpec) -> dict[str, float]:
    """Train one member as ``spec`` says and write its member folder; return its metrics.

    Everything that can be checked is checked before the first file is written: the folders can be
    written, the trainer settings allow training and validation, the data (labels, paths, images,
    split, batch size), the model, and what the member folder already holds. A failure is recorded in
    the folder (``error.txt``, status ``failed`` when there is a manifest) and raised; rerunning the
    same command retries the member.

    >>> metrics = train_member(TrainSpec(member_dir=..., data=..., model=..., transforms=...))  # doctest: +SKIP

    Raises:
        MemberConflict: the folder holds another config's member (nothing is recorded in it).
        PipelineError: a problem the message names (data, config, folder, training without progress).
    """
    start = time.time()
    member_dir = Path(spec.member_dir)
    is_zero = _process_rank() == 0
    try:
        return _train(spec, member_dir, start, is_zero)
    except MemberConflict:
        raise
    except Exception as err:
        if is_zero:
            mark_failed(member_dir, err)
        raise


def _prepare_folder(member_dir: Path) -> None:
    """Rank 0: the member and sweep folders can be written; temporary files of killed runs are removed."""
    check_writable_dir(member_dir)
    check_writable_dir(member_dir.parent)
    clean_stale_temps(member_dir, recursive=True)
    clean_stale_temps(member_dir.parent)


def _train(spec: TrainSpec, member_dir: Path, start: float, is_zero: bool) -> dict[str, float]:
    limit_threads_to_assigned_cpus()
    if is_zero:
        _prepare_folder(member_dir)
    pl.seed_everything(int(spec.seed), workers=True)
    check_trainer_settings(spec.trainer_settings)
    if spec.optimizer is not None:
        optimizer_lr(spec.optimizer)
    check_fold_index(spec.data.fold, spec.data.n_folds)
    table = read_train_table(spec.data)
    module = _build_module(spec, len(table.classes))
    config = _record(spec, module.mean, module.std)
    digest = member_hash(spec, config)
    plan = plan_member(member_dir, digest, spec.overwrite)
    if plan.action == "skip":  # before the images are verified: a completed member decodes nothing
        log.info("Member %s is already completed; skipping it.", member_dir)
        return cast(dict[str, float], plan.metrics)
    table, folds, new_folds = _prepare_data(spec.data, table, member_dir.parent)
    manifest = _manifest(spec, table.classes, module, digest)
    # Every check has passed: from here on files are written.
    if is_zero and new_folds:
        save_folds(member_dir.parent / "folds.csv", folds)
    train_dl, val_dl, val_table = _loaders(spec, table, folds, module.mean, module.std)
    if is_zero:
        if plan.action == "train":
            clear_member(member_dir)
        _write_setup(member_dir, config, table, folds, val_dl)
    return _fit(spec, member_dir, module, config, manifest, plan, (train_dl, val_dl, val_table), start, is_zero)


def _fit(
    spec: TrainSpec, member_dir: Path, module: ClassifierModule, config: dict[str, Any], manifest: MemberManifest,
    plan: MemberPlan, loaders: tuple[DataLoader, DataLoader, ImageTable], start: float, is_zero: bool,
) -> dict[str, float]:
    """Fit (resuming when the plan says so), check that it trained and validated, and finish the member."""
    train_dl, val_dl, val_table = loaders
    run = None
    try:
        if spec.logger.kind == "wandb" and is_zero:
            run = init_wandb(spec.logger, member_dir, manifest.name, manifest.sweep, "train", config)
        make_trainer = spec.trainer or functools.partial(pl.Trainer, max_epochs=10)
        trainer: pl.Trainer = make_trainer(
            callbacks=_callbacks(spec), logger=create_lightning_logger(spec.logger, member_dir, run),
            default_root_dir=str(member_dir), **_trainer_overrides(spec),
        )
        if trainer.global_rank == 0:
            write_manifest(member_dir, manifest)
            _record_runtime(member_dir, **runtime_info(), world_size=trainer.world_size, started=start, ended=None)
        resume = plan.resume_from
        if resume is not None:
            log.info("Resuming %s from %s", manifest.name, resume)
        if trainer.global_rank != 0:
            fit_other_rank(trainer, module, train_dl, val_dl, resume)
            return {}
        with distributed_scope(trainer, member_dir, spec.relaunch):
            trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None, weights_only=True)
        guard = next(c for c in trainer.callbacks if isinstance(c, ProgressGuard))  # type: ignore[attr-defined]
        check_progress(trainer, guard, _checkpoint_callback(trainer).best_model_score, member_dir)
        metrics = _finish(trainer, module, member_dir, val_dl, val_table, manifest, start, run)
        for stale in member_dir.glob("hpc_ckpt_*.ckpt"):  # requeue checkpoints are of no use once completed
            stale.unlink()
        _record_runtime(member_dir, ended=time.time())
        return metrics
    finally:
        if run is not None:
            run.finish()
            if in_ray_task():
                # The worker exits right after this member (max_calls: 1) and takes W&B's service process
                # with it; shutting the service down now avoids a "Connection lost" trace at exit.
                import wandb

                wandb.teardown()


def _checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint:
    return next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))  # type: ignore[attr-defined]


def _finish(
    trainer: pl.Trainer, module: ClassifierModule, member_dir: Path, val_dl: DataLoader, val_table: ImageTable,
    manifest: MemberManifest, start: float, run: Any,
) -> dict[str, float]:
    """Reload the best checkpoint, save validation predictions and metrics, mark the member completed."""
    ckpt_cb = _checkpoint_callback(trainer)
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
