"""``pipeline-predict``: the composed config → policies and options → :func:`pipeline.submission.stage.submit`.

Runs inside one W&B run (``job_type=predict``, :mod:`pipeline.cli.wandb_runs`); the report's run joins its group.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.cli import CONF_DIR
from pipeline.cli.config import metric_name, register, to_container, to_dataclass
from pipeline.cli.errors import PREDICT_PATHS, compact_errors
from pipeline.cli.validate import check_extras_or_exit, validate
from pipeline.core.errors import ConfigError
from pipeline.core.tracking import LoggerSpec, init_wandb, run_tags
from pipeline.data.spec import DataSpec
from pipeline.predict.spec import BudgetSpec, EnsembleSpec, PredictOptions, TTASpec
from pipeline.submission.spec import SubmissionOptions

__all__ = ["run", "main", "options"]


# The image and crop sizes are each member's own (member.json); a command-line value here would be ignored.
_MEMBER_OWNED = ("data.image_size", "data.crop_size")


def _check_overrides() -> None:
    """Refuse command-line ``data.image_size``/``data.crop_size``: prediction uses each member's recorded sizes."""
    if not HydraConfig.initialized():
        return
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    given = [k for k in _MEMBER_OWNED if k in keys]
    if given:
        raise ConfigError(
            f"{given} on the command line: pipeline-predict predicts every member at the image and crop size it "
            "was trained with (member.json). To crop differently set tta.crop_size and list the members in "
            "tta.allow_crop_override."
        )


def options(cfg: DictConfig, spec: DataSpec, tta: TTASpec) -> PredictOptions:
    """The run options: the top-level keys, plus the ``tta`` and ``data`` keys the runner needs."""
    opts = to_dataclass(PredictOptions, cfg)
    opts.view_reduce = tta.reduce
    opts.chunk_size = tta.chunk_size or opts.chunk_size
    opts.allow_crop_override = list(tta.allow_crop_override)
    opts.member_chunk_size = dict(opts.member_chunk_size or {})  # null in predict.yaml, so {name: n} can be given
    opts.image_cache_dir, opts.image_cache_size = spec.cache_dir, spec.cache_size  # predict's own image cache
    return opts


def run(cfg: DictConfig) -> dict[str, Any]:
    """Config → plain options → :func:`~pipeline.submission.stage.submit`, inside one W&B run."""
    from pipeline.cli.wandb_runs import log_predict_run, predict_tags
    from pipeline.predict.choose import candidate_policies
    from pipeline.predict.distributed import distribute_spec
    from pipeline.predict.tta import create_policy
    from pipeline.submission.stage import submit

    _check_overrides()
    validate(cfg, "predict")
    spec = to_dataclass(DataSpec, cfg.data)
    tta = to_dataclass(TTASpec, cfg.tta)
    auto = tta.name == "auto"  # a policy per model, chosen among tta.candidates on the OOF rows
    candidates = candidate_policies(tta.candidates, tta.crop_size) if auto else []
    submit_policy = create_policy("none" if auto else tta.name, crop_size=tta.crop_size,
                                  **({} if auto else tta.policy_fields()))
    extra = [create_policy(name, crop_size=tta.crop_size) for name in cfg.policies if name != submit_policy.name]
    opts = options(cfg, spec, tta)
    metric = metric_name(cfg.metric)
    out_dir = Path(cfg.predict_dir)
    logger = to_dataclass(LoggerSpec, cfg.logger)
    run = None
    try:
        run_info: dict[str, Any] = {}
        if isinstance(cfg.metric, DictConfig):  # so that pipeline-report can import the user's metric again
            run_info["metric_target"] = to_container(cfg.metric)
        if logger.kind == "wandb":
            group, tags = f"{cfg.experiment_name}/{cfg.sweep_name}", predict_tags(to_container(cfg.members),
                                                                                    cfg.experiment_name)
            run = init_wandb(logger, out_dir, "predict", group, "predict", to_container(cfg), tags)
            # The report stage logs into a run of its own in the same group, with the same tags.
            run_info["wandb"] = {"run_id": run.id, "dir": str(out_dir), "project": logger.project,
                                 "entity": logger.entity, "mode": run.settings.mode, "group": group,
                                 "tags": run_tags(logger, *tags)}
        summary = submit(
            to_container(cfg.members), spec, extra, submit_policy, out_dir, opts,
            to_dataclass(EnsembleSpec, cfg.ensemble), to_dataclass(SubmissionOptions, cfg.submission), metric,
            candidates, tta.max_passes, distribute_spec(to_container(cfg.get("distribute"))), tta.margin, run_info,
            to_dataclass(BudgetSpec, cfg.get("budget") or {}),
        )
        if run is not None:
            log_predict_run(run, summary, out_dir)
    finally:
        if run is not None:
            run.finish()
    lb = summary["leaderboard"]
    print(f"Submission written: {summary['submission']}")
    print(f"Metric: {summary['metric']} ({summary['metric_reason']})")
    if plan := summary.get("budget"):
        print(f"Time budget ({plan['setting']}): {', '.join(f'{g} under {k}' for g, k in plan['plan'].items())}, "
              f"{plan['submitted_cost_seconds']:.3g} s of {plan['limit_seconds']:.3g} s ({plan['reason']})")
    if lb:
        print(f"Demo leaderboard ({lb['metric']}, {lb['rows']} test images): {lb['score']:.4f}")
    return summary


def main() -> None:
    """Hydra entry point of ``pipeline-predict`` (the console script is :func:`pipeline.cli.entry.predict`)."""
    register()
    check_extras_or_exit(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")(compact_errors(PREDICT_PATHS)(run))()


if __name__ == "__main__":
    main()
