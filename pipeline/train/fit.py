"""Train one ensemble member and write its member folder: :func:`train_member`.

Re-running with the same spec skips a completed member and resumes an interrupted one from its newest
checkpoint. With several devices (DDP) only rank 0 writes the folder and its W&B run.
"""

from __future__ import annotations

import contextlib
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
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_path, check_writable_dir, clean_stale_temps, read_json, write_json
from pipeline.core.task import Task
from pipeline.core.tracking import init_wandb
from pipeline.data.augment import resolve_normalization, transform_to_dict
from pipeline.data.decode import verify_images
from pipeline.data.folds import check_fold_index, resolve_folds, save_folds, split_indices
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_train_table
from pipeline.member.lock import member_lock
from pipeline.member.manifest import MemberManifest, mark_failed, write_manifest
from pipeline.member.predictions import write_predictions
from pipeline.member.teacher import TeacherRequest, TeacherSpec, TeacherTargets, write_teacher_record
from pipeline.member.weights import export_member
from pipeline.models.factory import check_input_size, create_model, model_data_config
from pipeline.models.heads import OutputHead, head_for
from pipeline.train.averaging import AVERAGED_KEY, describe_averaging
from pipeline.train.callbacks import contract_checkpoint, member_callbacks
from pipeline.train.checks import ProgressGuard, check_image_sizes, check_progress, check_split_sizes, check_trainer_settings
from pipeline.train.datamodule import MemberDataModule
from pipeline.train.ddp import distributed_scope, fit_other_rank
from pipeline.train.identity import check_weights_source, member_hash, with_weights_hash
from pipeline.train.loggers import create_lightning_logger, log_member_artifacts, member_tags
from pipeline.train.module import ClassifierModule, optimizer_lr
from pipeline.train.recipe import (
    AUTO_MIXED,
    check_recipe,
    check_run_length,
    describe_recipe,
    resolve_precision,
)
from pipeline.train.snapshots import check_snapshot_folders, snapshot_scheduler, write_snapshot_members
from pipeline.train.spec import TrainSpec
from pipeline.train.state import MemberConflict, MemberPlan, clear_member, plan_member
from pipeline.train.sweep import ARTIFACTS_KEY, RUNTIME, in_ray_task, limit_threads_to_assigned_cpus, runtime_info
from pipeline.train.targets import resolve_task_recipe, val_scores
from pipeline.train.teacher import check_teacher

__all__ = ["train_member", "MemberConflict"]

log = logging.getLogger(__name__)


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


@torch.inference_mode()
def _predict_validation(module: ClassifierModule, loader: DataLoader, n_rows: int) -> np.ndarray:
    """Outputs (probabilities, or values) for every validation row, put back in table order by the row index."""
    module.eval()
    device = next(module.parameters()).device
    probs = np.zeros((n_rows, module.hparams["num_classes"]), dtype=np.float64)
    for batch in loader:
        out = module.head(module.eval_logits(batch["image"].to(device)))
        probs[batch["index"].numpy()] = out.cpu().numpy()
    return probs


def _build_module(spec: TrainSpec, num_classes: int, head: OutputHead | None = None) -> ClassifierModule:
    """Check the model name and input size, resolve normalisation, build the module."""
    m, data = spec.model, spec.data
    kwargs = dict(m.kwargs or {})
    log.info("Instantiating model <timm.create_model %s>", m.name)
    probe = create_model(m.name, num_classes=num_classes, in_chans=data.in_chans, **kwargs)
    check_input_size(probe, in_chans=data.in_chans, size=data.crop_size)
    mean, std = resolve_normalization(model_data_config(probe), data.in_chans, spec.aug_mean, spec.aug_std)
    del probe
    scheduler = spec.scheduler
    if spec.snapshots:  # checked by member_callbacks: max_epochs is a multiple of snapshots
        scheduler = snapshot_scheduler(int(spec.trainer_settings["max_epochs"]) // spec.snapshots)
        log.info("snapshots=%d: the learning rate follows cosine warm restarts (the configured scheduler is replaced)",
                 spec.snapshots)
    return ClassifierModule(
        model_name=m.name, num_classes=num_classes, in_chans=data.in_chans, crop_size=data.crop_size, mean=mean,
        std=std, pretrained=bool(m.pretrained), weights=m.weights, model_kwargs=kwargs,
        label_smoothing=float(spec.label_smoothing), optimizer=spec.optimizer, scheduler=scheduler,
        head_lr=m.head_lr, layer_decay=m.layer_decay, loss=spec.loss,
        mixup=asdict(spec.mixup) if spec.mixup is not None else None,
        output=None if head is None else head.to_dict(),
        teacher=None if spec.teacher is None else {"temperature": spec.teacher.tau},
    )


def _manifest(spec: TrainSpec, classes: list[str], module: ClassifierModule, digest: str, task: Task) -> MemberManifest:
    data, name = spec.data, spec.member_name
    return MemberManifest(
        name=name, model_name=spec.model.name, num_classes=len(classes), in_chans=data.in_chans,
        classes=classes, image_size=data.image_size, crop_size=data.crop_size, mean=module.mean, std=module.std,
        n_folds=data.n_folds, fold=data.fold, seed=int(spec.seed), split_seed=data.split_seed, config_hash=digest,
        model_kwargs=dict(spec.model.kwargs or {}), sweep=spec.sweep, model_group=name.rsplit("-", 1)[0],
        data={**asdict(data), "root": str(data.root_path.resolve())},
        recipe=describe_recipe(spec, module.scheduler_factory),
        task=None if task.kind == "multiclass" else task.to_dict(), output=module.head.to_dict(),
    )


def _write_setup(member_dir: Path, config: dict[str, Any], table: ImageTable, folds: Any, dm: MemberDataModule) -> None:
    """The member folder's files that do not depend on training: config, classes, folds, eval transform."""
    member_dir.mkdir(parents=True, exist_ok=True)
    (member_dir / "error.txt").unlink(missing_ok=True)
    with atomic_path(member_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_json(member_dir / "classes.json", table.classes)
    save_folds(member_dir / "folds.csv", folds)
    write_json(member_dir / "eval_transform.json", transform_to_dict(cast(Any, dm.val_set).transform))


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
    if settings.get("precision") == AUTO_MIXED:
        extra["precision"] = resolve_precision(AUTO_MIXED, accelerator)
        log.info("trainer.precision=%s resolved to %s", AUTO_MIXED, extra["precision"])
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
        MemberBusy: another process is training this member now (nothing is recorded in it).
        PipelineError: a problem the message names (data, config, folder, training without progress).
    """
    from pipeline.train.quiet import quiet_third_party

    quiet_third_party()  # the Python API as quiet as the command line
    start = time.time()
    member_dir = Path(spec.member_dir)
    is_zero = _process_rank() == 0
    if is_zero:  # checked before the lock creates anything, so an unwritable folder is named as such
        check_writable_dir(member_dir)
        check_writable_dir(member_dir.parent)
    # MemberBusy (another process holds the lock) leaves the folder as it is; a failure is recorded under the lock.
    with member_lock(member_dir) if is_zero else contextlib.nullcontext():  # other ranks train the same member
        try:
            return _train(spec, member_dir, start, is_zero)
        except MemberConflict:  # the folder holds another config's member: nothing is recorded in it
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
    check_image_sizes(spec.data.image_size, spec.data.crop_size)
    if spec.optimizer is not None:
        optimizer_lr(spec.optimizer)
    check_fold_index(spec.data.fold, spec.data.n_folds)
    table = read_train_table(spec.data)
    task = table.task or Task("multiclass", tuple(table.classes))
    if task.kind != "multiclass" or spec.data.task == "auto":
        log.info("Task: %s (%s)", task.kind, task.reason or "one class per image")
    spec = resolve_task_recipe(spec, task)
    check_recipe(spec)
    if spec.teacher is not None:
        check_teacher(spec.teacher, task.softmax, spec.mixup is not None and spec.mixup.enabled, spec.loss)
        if spec.teacher_builder is None:
            raise ConfigError("TrainSpec.teacher needs TrainSpec.teacher_builder "
                              "(pipeline.predict.teacher.build_teacher_targets).")
    callbacks = member_callbacks(spec, has_logger=spec.logger.kind != "none")
    module = _build_module(spec, task.n_outputs, head_for(task, spec.loss, table.labels))
    raw = _record(spec, module.mean, module.std)
    config = with_weights_hash(raw)
    digest = member_hash(spec, config)
    if not spec.overwrite:
        check_weights_source(member_dir, config)
    plan = plan_member(member_dir, digest, spec.overwrite, member_hash(spec, raw))
    if plan.action == "skip":  # before the images are verified: a completed member decodes nothing
        log.info("Member %s is already completed; skipping it.", member_dir)
        return cast(dict[str, float], plan.metrics)
    if spec.snapshots:
        check_snapshot_folders(member_dir, spec.member_name, spec.snapshots, digest, spec.overwrite)
    table, folds, new_folds = _prepare_data(spec.data, table, member_dir.parent)
    train_rows, val_rows = split_indices(folds, spec.data.fold, spec.data.n_folds)
    teacher = _teacher_targets(spec, table, train_rows, val_rows)
    check_run_length(spec, len(train_rows) + (0 if teacher is None else len(teacher[1].test_probs)))
    if not task.softmax:  # a linear head standardises with its own training rows' targets only
        assert table.labels is not None
        module.set_head(head_for(task, spec.loss, table.labels[train_rows]))
    manifest = _manifest(spec, table.classes, module, digest, task)
    # Every check has passed: from here on files are written.
    if is_zero and new_folds:
        save_folds(member_dir.parent / "folds.csv", folds)
    dm = MemberDataModule(spec.data, table, folds, spec.transforms, module.mean, module.std, int(spec.seed), teacher)
    dm.setup("fit")
    if is_zero:
        if plan.action == "train":
            clear_member(member_dir)
        _write_setup(member_dir, config, table, folds, dm)
        if teacher is not None:
            write_teacher_record(member_dir, *teacher, [table.ids[i] for i in train_rows], list(table.classes))
    return _fit(spec, member_dir, module, config, manifest, plan, (dm, callbacks), start, is_zero)


def _teacher_targets(spec: TrainSpec, table: ImageTable, train_rows: Any,
                     val_rows: Any) -> tuple[TeacherSpec, TeacherTargets] | None:
    """The teacher and its targets (every check of the source runs here, before the member writes anything)."""
    teacher = spec.teacher
    if teacher is None or spec.teacher_builder is None:
        return None
    targets = spec.teacher_builder(teacher, TeacherRequest(spec.data, table, train_rows, val_rows))
    log.info("Teacher (%s) from %s: %d training rows, %d test images (%s)", teacher.kind, teacher.source,
             len(train_rows), len(targets.test_probs), ", ".join(targets.record.get("teacher_members", [])))
    return teacher, targets


def _fit(
    spec: TrainSpec, member_dir: Path, module: ClassifierModule, config: dict[str, Any], manifest: MemberManifest,
    plan: MemberPlan, parts: tuple[MemberDataModule, list[Any]], start: float, is_zero: bool,
) -> dict[str, float]:
    """Fit (resuming when the plan says so), check that it trained and validated, and finish the member."""
    dm, callbacks = parts
    run = None
    try:
        if spec.logger.kind == "wandb" and is_zero:
            run = init_wandb(spec.logger, member_dir, manifest.name, manifest.sweep, "train", config, member_tags(manifest))
        make_trainer = spec.trainer or functools.partial(pl.Trainer, max_epochs=10)
        trainer: pl.Trainer = make_trainer(
            callbacks=callbacks, logger=create_lightning_logger(spec.logger, member_dir, run),
            default_root_dir=str(member_dir), **_trainer_overrides(spec),
        )
        if trainer.global_rank == 0:
            write_manifest(member_dir, manifest)
            _record_runtime(member_dir, **runtime_info(), world_size=trainer.world_size, started=start, ended=None)
        resume = plan.resume_from
        if resume is not None:
            log.info("Resuming %s from %s", manifest.name, resume)
        if trainer.global_rank != 0:
            fit_other_rank(trainer, module, dm, resume)
            return {}
        with distributed_scope(trainer, member_dir, spec.relaunch):
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
        guard = next(c for c in trainer.callbacks if isinstance(c, ProgressGuard))  # type: ignore[attr-defined]
        check_progress(trainer, guard, _checkpoint_callback(trainer, member_dir).best_model_score, member_dir)
        metrics = _finish(trainer, module, member_dir, dm, manifest, start, run, spec.snapshots)
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


def _checkpoint_callback(trainer: pl.Trainer, member_dir: Path) -> ModelCheckpoint:
    return contract_checkpoint(trainer.callbacks, member_dir)  # type: ignore[attr-defined]


def _finish(
    trainer: pl.Trainer, module: ClassifierModule, member_dir: Path, dm: MemberDataModule,
    manifest: MemberManifest, start: float, run: Any, snapshots: int = 0,
) -> dict[str, float]:
    """Reload the best checkpoint, save validation predictions and metrics, mark the member completed."""
    ckpt_cb = _checkpoint_callback(trainer, member_dir)
    val_table = dm.val_table
    best = Path(ckpt_cb.best_model_path or member_dir / "checkpoints" / "last.ckpt")
    if best.name != "best.ckpt":  # no monitored value was ever logged (e.g. no validation): keep the last weights
        best = member_dir / "checkpoints" / "best.ckpt"
        trainer.save_checkpoint(best, weights_only=False)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(ckpt["state_dict"])
    module.to(trainer.strategy.root_device)
    probs = _predict_validation(module, dm.val_dataloader(), len(val_table))
    task = Task.from_dict(manifest.task, manifest.classes)
    targets = None if task.softmax else manifest.classes
    write_predictions(member_dir / "val_predictions.csv", val_table.ids, probs, manifest.classes, val_table.labels,
                      values=task.is_value, targets=targets)
    assert val_table.labels is not None
    scores = val_scores(probs, val_table.labels, task)
    metrics = {
        "monitor": str(ckpt_cb.monitor),
        "best_score": float("nan") if ckpt_cb.best_model_score is None else float(ckpt_cb.best_model_score),
        "epochs": int(trainer.current_epoch), "wall_time_s": round(time.time() - start, 2),
        **scores, "n_val": len(val_table),
    }
    if any(describe_averaging(c) for c in trainer.callbacks):  # type: ignore[attr-defined]
        # how many updates the saved average holds (0: best.ckpt is from before averaging began)
        metrics["averaged_over"] = int(ckpt.get(AVERAGED_KEY, {}).get("n_averaged", 0))
    write_json(member_dir / "metrics.json", metrics)
    if run is not None:
        run.summary.update({f"best/{k}": v for k, v in scores.items()})
    if snapshots:  # before this member completes: a re-run that skips it must find its snapshots written
        write_snapshot_members(member_dir, manifest, module, snapshots,
                               lambda m: _predict_validation(m, dm.val_dataloader(), len(val_table)),
                               val_table.ids, val_table.labels)
    manifest.status = "completed"
    write_manifest(member_dir, manifest)  # export reads the manifest; the status is final only if export works
    try:
        export_member(member_dir)
    except Exception:
        manifest.status = "failed"
        write_manifest(member_dir, manifest)
        raise
    if run is not None:
        _record_runtime(member_dir, **{ARTIFACTS_KEY: log_member_artifacts(run, member_dir, manifest, metrics)})
    shown = " ".join(f"{k}={v:.4f}" for k, v in scores.items())
    log.info("Member %s completed: %s → %s", manifest.name, shown, member_dir)
    return metrics  # type: ignore[return-value]
