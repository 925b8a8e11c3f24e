"""``pipeline-train``: train one ensemble member and write its member folder.

``train(cfg)`` does the work and is what tests call; ``main`` is the Hydra entry point. A sweep
(``pipeline-train -m ...``) calls ``main`` once per member, wherever the launcher runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning_fabric.utilities.seed import pl_worker_init_function
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from pipeline.augment import resolve_normalization, transform_to_dict
from pipeline.cache import cache_for_spec
from pipeline.config import CONF_DIR, config_hash, register, to_container, to_dataclass
from pipeline.data import DataSpec, ImageDataset, ImageTable, load_or_create_folds, read_train_table, split_indices, verify_images
from pipeline.export import export_member
from pipeline.finetune import BackboneFreeze
from pipeline.loggers import LoggerSpec, create_lightning_logger, init_wandb
from pipeline.member import MANIFEST, MemberManifest, member_status, read_manifest, write_manifest
from pipeline.models import check_input_size, create_model, model_data_config
from pipeline.module import ClassifierModule
from pipeline.predictions import write_predictions
from pipeline.sweep import (
    RUNTIME,
    continue_sweep_on_failure,
    in_ray_task,
    limit_threads_to_assigned_cpus,
    register_resolvers,
    runtime_info,
)
from pipeline.utils import read_json, write_json

__all__ = ["train", "main", "record_failure", "MemberConflict", "MEMBER_KEYS"]

log = logging.getLogger(__name__)

# Environment variables Lightning sets in the process that launches a DDP member's other ranks.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


class MemberConflict(ValueError):
    """The member folder holds a member trained with another config; it is left untouched."""


# The config keys that define a member's result; a completed member with another hash is not "the same".
MEMBER_KEYS = ("model", "aug", "optimizer", "scheduler", "seed", "label_smoothing", "data_split", "max_epochs")


def _member_hash(cfg: DictConfig) -> str:
    view = OmegaConf.create({
        "model": to_container(cfg.model), "aug": to_container(cfg.aug), "optimizer": to_container(cfg.optimizer),
        "scheduler": to_container(cfg.get("scheduler")), "seed": cfg.seed, "label_smoothing": cfg.label_smoothing,
        "data_split": {
            k: cfg.data[k] for k in ("n_folds", "fold", "split_seed", "holdout_fraction", "image_size", "crop_size", "in_chans")
        },
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


def _loaders(cfg: DictConfig, spec: DataSpec, table: ImageTable, folds: Any) -> tuple[DataLoader, DataLoader, ImageTable]:
    train_idx, val_idx = split_indices(folds, spec.fold, spec.n_folds)
    log.info("Instantiating train/eval augmentation <%s>", cfg.aug.train._target_)
    train_tf, eval_tf = instantiate(cfg.aug.train), instantiate(cfg.aug.eval)
    _seed_augmentation(train_tf, int(cfg.seed))
    val_table = table.subset(val_idx)
    common: dict[str, Any] = dict(
        batch_size=spec.batch_size, num_workers=spec.num_workers, persistent_workers=spec.num_workers > 0
    )
    cache = cache_for_spec(table, spec)  # built once on the whole table; both splits read their rows from it
    train_ds = ImageDataset(table.subset(train_idx), train_tf, spec.in_chans, cache)
    init = _augmentation_worker_init if spec.num_workers > 0 else None
    train_dl = DataLoader(train_ds, shuffle=True, drop_last=True, worker_init_fn=init, **common)
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
        raise MemberConflict(
            f"Member folder {member_dir} holds a member trained with a different config (hash {manifest.config_hash} "
            f"!= {digest}). Use another sweep_name, or overwrite=true to retrain it."
        )
    if status == "completed" and manifest.config_hash == digest:
        log.info("Member %s is already completed; skipping it.", member_dir)
        metrics: dict[str, float] = read_json(member_dir / "metrics.json")
        return metrics
    return None


def _write_setup(cfg: DictConfig, member_dir: Path, table: ImageTable, folds: Any, val_dl: DataLoader) -> None:
    """The member folder's files that do not depend on training: config, classes, folds, eval transform."""
    member_dir.mkdir(parents=True, exist_ok=True)
    (member_dir / "error.txt").unlink(missing_ok=True)
    OmegaConf.save(cfg, member_dir / "config.yaml", resolve=True)
    write_json(member_dir / "classes.json", table.classes)
    folds.to_csv(member_dir / "folds.csv", index=False)
    write_json(member_dir / "eval_transform.json", transform_to_dict(cast(ImageDataset, val_dl.dataset).transform))


def _resume_checkpoint(member_dir: Path) -> Path | None:
    """The newest complete checkpoint to resume from: ``checkpoints/last.ckpt`` or a SLURM requeue one.

    Lightning's SLURM handler saves ``hpc_ckpt_<n>.ckpt`` mid-epoch before it requeues the job, so it
    can be newer than ``last.ckpt`` (saved at epoch ends). A process killed while writing leaves a
    truncated file (not a zip archive): it is skipped rather than failing every later attempt.
    """
    candidates = [member_dir / "checkpoints" / "last.ckpt", *member_dir.glob("hpc_ckpt_*.ckpt")]
    usable = []
    for path in candidates:
        if not path.is_file():
            continue
        if zipfile.is_zipfile(path):
            usable.append(path)
        else:
            log.warning("Ignoring incomplete checkpoint %s (the run was probably killed while saving it).", path)
    return max(usable, key=lambda p: p.stat().st_mtime, default=None)


def _process_rank() -> int:
    """This process's rank, from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID) before any Trainer."""
    return int(getattr(rank_zero_only, "rank", 0))


def _trainer_overrides(cfg: DictConfig) -> dict[str, Any]:
    """Trainer arguments that depend on where the member runs rather than on its config."""
    extra: dict[str, Any] = {}
    if SLURMEnvironment.detect():
        # Lightning's auto-requeue: on the requeue signal it saves an hpc checkpoint and requeues the job.
        extra["plugins"] = [SLURMEnvironment(auto_requeue=True)]
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if cfg.trainer.get("sync_batchnorm") and (accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())):
        log.info("trainer.sync_batchnorm needs CUDA (torch's SyncBatchNorm); on CPU each process keeps its own statistics.")
        extra["sync_batchnorm"] = False
    return extra


def _record_runtime(member_dir: Path, **fields: Any) -> None:
    path = member_dir / RUNTIME
    info = read_json(path) if path.is_file() else {}
    write_json(path, {**info, **fields})


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one member as configured and write its member folder; return its metrics.

    Re-running with the same config skips a completed member and resumes an interrupted one from
    its newest checkpoint. With several devices (DDP) only rank 0 writes the folder and its W&B run.
    """
    start = time.time()
    limit_threads_to_assigned_cpus()
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
    is_zero = _process_rank() == 0
    if is_zero:
        _write_setup(cfg, member_dir, table, folds, val_dl)
    logger_spec = to_dataclass(LoggerSpec, cfg.logger)
    run = None
    try:
        if logger_spec.kind == "wandb" and is_zero:
            run = init_wandb(logger_spec, member_dir, manifest.name, manifest.sweep, "train", to_container(cfg))
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=_callbacks(cfg, member_dir), logger=create_lightning_logger(logger_spec, member_dir, run),
            default_root_dir=str(member_dir), **_trainer_overrides(cfg),
        )
        if trainer.global_rank == 0:
            write_manifest(member_dir, manifest)
            _record_runtime(member_dir, **runtime_info(), world_size=trainer.world_size, started=start, ended=None)
        resume = _resume_checkpoint(member_dir)
        if resume is not None:
            log.info("Resuming %s from %s", manifest.name, resume)
        if trainer.global_rank != 0:
            _fit_other_rank(trainer, module, train_dl, val_dl, resume)
            return {}
        with _distributed_scope(trainer, member_dir):
            trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None, weights_only=True)
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


def _fit_other_rank(
    trainer: pl.Trainer, module: ClassifierModule, train_dl: DataLoader, val_dl: DataLoader, resume: Path | None
) -> None:
    """``fit`` on a DDP rank other than 0: a failure is logged here and recorded by rank 0.

    Lightning SIGKILLs the process that started the ranks (which may be running a whole sweep) as soon
    as one of them exits non-zero. Rank 0 fails too once this rank has left, and records the member.
    """
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None, weights_only=True)
    except Exception:
        log.exception("DDP rank %d failed; rank 0 records the member's failure.", trainer.global_rank)


def _entry_script() -> str:
    """A script that runs ``pipeline-train``, for Lightning to start a DDP member's other ranks with."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:  # Lightning then runs `python -m <spec.name>` and ignores argv[0]
        if spec.name != "pipeline.train":
            raise RuntimeError(
                f"Lightning starts DDP ranks by re-running this process's module ({spec.name}), which is not "
                "pipeline-train. Run the member with `pipeline-train`, or let the cluster start one process per "
                "device (SLURM: launcher=slurm sets tasks_per_node=trainer.devices)."
            )
        return sys.argv[0]
    if Path(sys.argv[0]).name in ("pipeline-train", "train.py"):
        return sys.argv[0]
    # A Ray worker's argv is Ray's default_worker.py: use the console script of this environment.
    script = Path(sys.executable).with_name("pipeline-train")
    found = str(script) if script.is_file() else shutil.which("pipeline-train")
    if found is None:
        raise RuntimeError("DDP needs the `pipeline-train` console script (pip install -e .) to start its other ranks.")
    return found


def _single_run_argv(hc: Any) -> list[str]:
    """This job as a single-run command line: its config dirs and name, hydra overrides and task overrides.

    Hydra's own ``hydra.mode=MULTIRUN`` would make the relaunched rank a sweep again; Lightning appends
    run.dir, job.name and output_subdir itself.
    """
    argv = [_entry_script()]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":  # --config-dir
            argv += ["--config-dir", str(source.path)]
    argv += ["--config-name", str(hc.job.config_name)]
    own = ("hydra.mode=", "hydra.run.dir=", "hydra.job.name=", "hydra.output_subdir=")
    return [*argv, *(o for o in hc.overrides.hydra if not o.startswith(own)), *hc.overrides.task]


@contextlib.contextmanager
def _relaunch_as_this_member(member_dir: Path) -> Iterator[None]:
    """Make Lightning's relaunch command this member's single run (Lightning #11300, hydra #2070).

    Lightning starts ranks 1… by re-running ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>``.
    In a multirun that is the whole sweep (``-m`` and every swept value) and run.dir is not the job's
    folder; in a Ray worker argv is Ray's. So while ``fit`` starts them, argv is this job's overrides
    and run.dir is this member's folder.
    """
    if not HydraConfig.initialized():
        yield
        return
    hc = HydraConfig.get()
    run: Any = hc.run  # a DictConfig node at run time
    saved_argv, saved_dir = list(sys.argv), run.dir
    sys.argv = _single_run_argv(hc)
    with read_write(run):
        run.dir = str(member_dir)
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(run):
            run.dir = saved_dir


def _stop_children(procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Wait for the ranks Lightning started; kill the ones stuck (e.g. in a collective after rank 0 failed)."""
    deadline = time.monotonic() + timeout
    stuck = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(proc)
    if stuck:
        # Lightning's child-process observer SIGKILLs this process when a child dies non-zero; it watches
        # this very list, so empty it first. This process lives on to run the sweep's next member.
        procs.clear()
        for proc in stuck:
            log.warning("Killing DDP rank process %d, still running after this member ended.", proc.pid)
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _distributed_scope(trainer: pl.Trainer, member_dir: Path) -> Iterator[None]:
    """Run ``fit`` with several processes and leave this process clean for the sweep's next member.

    Lightning leaves its DDP environment variables and process group behind; the next member of a
    sweep in this process would then wait for ranks that never come.
    """
    if trainer.world_size == 1:
        yield
        return
    launcher = trainer.strategy.launcher
    spawns = isinstance(launcher, _SubprocessScriptLauncher) and not launcher.cluster_environment.creates_processes_externally
    procs = launcher.procs if isinstance(launcher, _SubprocessScriptLauncher) else []
    saved_env, threads = {k: os.environ.get(k) for k in _DDP_ENV}, torch.get_num_threads()
    try:
        with _relaunch_as_this_member(member_dir) if spawns else contextlib.nullcontext():
            yield
    finally:
        if torch.distributed.is_initialized():  # also unblocks ranks waiting in a collective after a failure
            torch.distributed.destroy_process_group()
        if spawns:
            _stop_children(procs)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            torch.set_num_threads(threads)


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
register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> dict[str, float]:
    """Hydra entry point ``pipeline-train``.

    A failed member is recorded in its folder (``error.txt``, status ``failed``). A single run then
    fails; in a sweep the other members go on and ``pipeline.sweep.SweepSummary`` reports the failure
    and exits non-zero at the end.
    """
    try:
        return train(cfg)
    except MemberConflict:
        raise  # the folder belongs to another member: record nothing in it
    except Exception as err:
        record_failure(Path(cfg.paths.output_dir), err)
        if not continue_sweep_on_failure():
            raise
        log.exception("Member %s failed (recorded in %s); the sweep goes on.", cfg.member_name, cfg.paths.output_dir)
        return {}


if __name__ == "__main__":
    main()
