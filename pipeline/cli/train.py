"""``pipeline-train``: the composed config → a :class:`~pipeline.train.spec.TrainSpec` → one trained member.

A sweep (``pipeline-train -m ...``) calls the task once per member, wherever the launcher runs it. Torch,
Lightning and timm are imported only once the arguments are parsed, so ``--help`` and ``--cfg`` are quick.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict, read_write

from pipeline.cli import CONF_DIR
from pipeline.cli.config import register, to_container, to_dataclass
from pipeline.cli.errors import TRAIN_PATHS, compact_errors, explain
from pipeline.cli.sweep import continue_sweep_on_failure
from pipeline.cli.validate import check_extras_or_exit, validate
from pipeline.core.errors import ConfigError
from pipeline.core.tracking import LoggerSpec
from pipeline.data.spec import DataSpec
from pipeline.member.teacher import TeacherSpec
from pipeline.models.spec import ModelSpec
from pipeline.train.spec import MixupSpec, TrainSpec

__all__ = ["train_spec", "run", "monitored_value", "main"]

log = logging.getLogger(__name__)


def instantiate_callbacks(node: Any) -> list[Any] | None:
    """The ``callbacks`` group's nodes, instantiated in order; a node set to null is left out.

    None when the config has no ``callbacks`` (a ``config.yaml`` written before the group existed): the
    library's defaults then apply.
    """
    if node is None:
        return None
    callbacks = []
    for name, sub in node.items():
        if sub is None:
            continue
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            raise ConfigError(f"callbacks.{name} has no _target_: each callbacks/ node names the callback class to build.")
        callbacks.append(instantiate(sub))
    return callbacks


def train_spec(cfg: DictConfig) -> TrainSpec:
    """The member ``cfg`` describes, as typed objects: instantiated optimizer, scheduler, trainer and augmentation."""

    def transforms(mean: list[float], std: list[float]) -> tuple[Any, Any]:
        node = copy.deepcopy(cfg)  # the aug pipelines interpolate ${aug.mean}/${aug.std}; cfg itself stays as composed
        with open_dict(node):
            node.aug.mean, node.aug.std = mean, std
        return instantiate(node.aug.train), instantiate(node.aug.eval)

    scheduler = cfg.get("scheduler")
    teacher, builder = _teacher(cfg.get("teacher"))
    return TrainSpec(
        member_dir=Path(cfg.paths.output_dir), data=to_dataclass(DataSpec, cfg.data), model=to_dataclass(ModelSpec, cfg.model),
        transforms=transforms, optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler and "_target_" in scheduler else None,
        trainer=instantiate(cfg.trainer, _partial_=True), logger=to_dataclass(LoggerSpec, cfg.logger),
        seed=int(cfg.seed), label_smoothing=float(cfg.label_smoothing), loss=str(cfg.get("loss") or "auto"),
        mixup=to_dataclass(MixupSpec, cfg.aug), monitor=str(cfg.monitor),
        monitor_mode=str(cfg.monitor_mode), early_stopping_patience=cfg.early_stopping_patience,
        overwrite=bool(cfg.get("overwrite", False)), aug_mean=to_container(cfg.aug.get("mean")),
        aug_std=to_container(cfg.aug.get("std")), name=str(cfg.member_name),
        sweep=f"{cfg.experiment_name}/{cfg.sweep_name}", config=to_container(cfg), relaunch=relaunch_as_this_member,
        callbacks=instantiate_callbacks(cfg.get("callbacks")), snapshots=int(cfg.get("snapshots") or 0),
        teacher=teacher, teacher_builder=builder,
    )


def _teacher(node: Any) -> tuple[TeacherSpec | None, Any]:
    """The ``teacher`` group as a :class:`TeacherSpec` with its source's digest, and the inference-side builder."""
    if not node or not node.get("kind"):
        return None, None
    from pipeline.predict.teacher import build_teacher_targets, source_digest

    spec = to_dataclass(TeacherSpec, node)
    return replace(spec, digest=source_digest(spec.source)), build_teacher_targets


def monitored_value(metrics: dict[str, Any]) -> float | None:
    """The member's best ``monitor`` value (``metrics.json`` ``best_score``), or None when there is none.

    This is what the task returns to Hydra, so a sweeper that optimises (``hydra/sweeper=optuna``) can
    rank members. None (a failed member, a rank other than 0, no finite monitored value) is what
    hydra-optuna-sweeper 1.3 records as a failed trial before the search goes on; a NaN would stop the
    whole search (Optuna refuses it, and the sweeper then fails telling it the trial's failure).
    """
    value = metrics.get("best_score")
    try:
        number = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def run(cfg: DictConfig) -> float | None:
    """Train the member and return its best ``monitor`` value (:func:`monitored_value`).

    A failure is recorded in the member folder (``error.txt``, status ``failed``). A single run then fails
    (one message for a problem the user can fix, see :mod:`pipeline.cli.errors`); in a sweep the other
    members go on, this one returns None, and :class:`pipeline.cli.sweep.SweepSummary` reports the failure
    and exits non-zero at the end.
    """
    from pipeline.member.lock import MemberBusy
    from pipeline.member.manifest import mark_failed
    from pipeline.train.fit import MemberConflict, train_member
    from pipeline.train.quiet import quiet_third_party

    quiet_third_party()
    member_dir = Path(cfg.paths.output_dir)
    try:
        try:
            validate(cfg, "train")  # a sweep job's own values (the callback saw the sweep's base config)
            spec = train_spec(cfg)
        except Exception as err:  # a config that cannot be instantiated: train_member never started
            mark_failed(member_dir, err)
            raise
        return monitored_value(train_member(spec))  # records its own failures
    except (MemberConflict, MemberBusy):
        raise  # the folder belongs to another member or another run: nothing was recorded in it
    except Exception as err:
        if not continue_sweep_on_failure():
            raise
        if (message := explain(err, cfg, TRAIN_PATHS)) is not None:
            log.error("Member %s failed (recorded in %s): %s The sweep goes on.", cfg.member_name, member_dir, message)
        else:
            log.exception("Member %s failed (recorded in %s); the sweep goes on.", cfg.member_name, member_dir)
        return None


def _entry_script() -> str:
    """A script that runs ``pipeline-train``, for Lightning to start a DDP member's other ranks with."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:  # Lightning then runs `python -m <spec.name>` and ignores argv[0]
        if spec.name != "pipeline.cli.train":
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
def relaunch_as_this_member(member_dir: Path) -> Iterator[None]:
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


def main() -> None:
    """Hydra entry point of ``pipeline-train`` (the console script is :func:`pipeline.cli.entry.train`)."""
    register()
    check_extras_or_exit(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(compact_errors(TRAIN_PATHS)(run))()


if __name__ == "__main__":
    main()
