"""``pipeline-report``: rebuild the report from a predict folder's saved predictions (no model runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli import CONF_DIR
from pipeline.cli.config import metric_name, register, to_dataclass
from pipeline.cli.errors import REPORT_PATHS, compact_errors
from pipeline.cli.validate import check_extras_or_exit, validate
from pipeline.core.tracking import LoggerSpec

__all__ = ["run", "main"]


def run(cfg: DictConfig) -> Any:
    """Config → :func:`~pipeline.report.build.build_report`; prints the table."""
    validate(cfg, "report")
    from pipeline.report.build import build_report
    from pipeline.report.text import render_table

    logger = to_dataclass(LoggerSpec, cfg.logger) if "logger" in cfg else LoggerSpec(mode="offline")
    spec = logger if cfg.wandb and logger.kind == "wandb" else None
    from pipeline.predict.record import PREDICT_JSON, PredictRecord

    if (Path(cfg.predict_dir) / PREDICT_JSON).is_file() and (target := PredictRecord.read(cfg.predict_dir).metric_target):
        metric_name(target, "predict.json metric_target")  # the user's metric pipeline-predict used, imported again
    metric = metric_name(cfg.metric)
    compare = [str(c) for c in (cfg.get("compare") or [])]
    df = build_report(Path(cfg.predict_dir), metric, int(cfg.n_boot), int(cfg.seed), wandb_spec=spec, compare=compare)
    print(f"Metric: {df.attrs['metric']} ({df.attrs['metric_reason']})")
    for warning in df.attrs["warnings"]:
        print(f"WARNING: {warning}")
    print(render_table(df))
    print(f"\nReport written: {Path(cfg.predict_dir) / 'report.md'}")
    return df


def main() -> None:
    """Hydra entry point of ``pipeline-report`` (the console script is :func:`pipeline.cli.entry.report`)."""
    register()
    check_extras_or_exit(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")(compact_errors(REPORT_PATHS)(run))()


if __name__ == "__main__":
    main()
