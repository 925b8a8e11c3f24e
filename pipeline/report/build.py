"""The report: what the ensemble and the TTA actually bought, and at what inference cost.

The report is rebuilt from the files the predict stage left in ``<sweep>/predict/`` alone
(``predict.json`` and the model-level OOF predictions in ``oof/``), so it can be regenerated at any
time and writes the same ``report.md``/``.csv``/``.json`` bytes each time (see
:mod:`pipeline.report.score` for the rows and how they are scored).

Outputs, in the predict folder::

    report.md  report.csv  report.json
    score_vs_cost.png  confusion_matrix.png  per_class.png  reliability.png
    member_correlation.png (two models or more)  most_wrong.png (when the training images are found)

The ★ row is the nested, cross-fitted pick (:mod:`pipeline.report.nested`); the naive in-sample best is
kept as ``in_sample_best`` and labelled optimistic. The paragraph also says what could be dropped for
free (:mod:`pipeline.report.savings`), which recipe differences between the models bought diversity or
score (:mod:`pipeline.report.members`, with the "What each model adds" table) and lists the choices ``pipeline-predict`` recorded
(``tta_choice``, ``ensemble_choice``) when there are any.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.io import atomic_path, clean_stale_temps, write_json
from pipeline.core.metrics import Metric, get_metric, paired_bootstrap
from pipeline.core.tracking import LoggerSpec, init_wandb, log_files_artifact
from pipeline.report.compare import compare_rows, compared_sentences, compared_summary
from pipeline.report.diagnostics import plot_diagnostics
from pipeline.report.groups import group_warnings
from pipeline.report.load import AUTO, PredictRun, load_predict_run
from pipeline.report.members import describe_members, recipe_sentences
from pipeline.report.nested import NESTED_PARTS, nested_pick
from pipeline.report.plots import plot_confusion, plot_most_wrong, plot_score_vs_cost, save_figure
from pipeline.report.savings import droppable_models, flip_effects, redundant_policies
from pipeline.report.score import Row, baseline_row, candidate_rows, score_rows, submitted_row
from pipeline.report.targets import needs_decision, plot_task
from pipeline.report.text import in_sample_summary, markdown, nested_summary, paragraph, summarize

__all__ = ["compute_report", "build_report"]

log = logging.getLogger(__name__)


def compute_report(predict_dir: str | Path, metric: str | None = None, n_boot: int = 1000,
                   seed: int = 0, compare: Sequence[str | Path] = ()) -> tuple[pd.DataFrame, dict[str, Any], PredictRun]:
    """Score every row and summarise, writing nothing.

    ``compare``: other predict folders on the same OOF rows (a distilled student, a pseudo-labelled
    generation): one row each, after this report's own rows and never picked (:mod:`pipeline.report.compare`).

    Returns:
        The report frame (``attrs``: metric, baseline; ``best`` is the nested pick, ``in_sample_best``
        the naive one), the summary (``report.json`` without rows), and the predict folder as read.
    """
    pr = load_predict_run(predict_dir)
    m = get_metric(metric or pr.info["metric"])
    rows = candidate_rows(pr, m, seed)
    base = baseline_row(pr, rows, m)
    df = score_rows(pr, rows, base, m, n_boot, seed)
    submitted = submitted_row(pr, rows)
    df["submitted"] = df.index == (-1 if submitted is None else submitted)
    df.attrs.update(metric=m.name, baseline=f"{base.model} / {pr.policy_names[base.key]}",
                    baseline_index=next(i for i, r in enumerate(rows) if r is base))
    df.attrs["final"] = _final_probs(pr, df, rows)  # the "final ensemble" plots show the submitted merge
    df.attrs["row_outputs"] = [r.probs for r in rows]
    # Candidates cheapest first, so ties in score or in votes go to the cheaper row.
    order = sorted(range(len(rows)), key=lambda i: (int(df.loc[i, "forward_passes_per_image"]), i))
    parts = min(NESTED_PARTS, len(pr.labels))  # a handful of OOF rows: as many parts as rows
    if parts < 2:
        raise ValueError(f"{pr.path}: the OOF files share {len(pr.labels)} row(s); the report needs at least 2.")
    pick = nested_pick([rows[i].probs for i in order], pr.labels, m, parts, seed)
    chosen = order[pick.chosen]
    df["in_sample_best"] = df["best"]
    df["best"] = df.index == chosen
    boot = paired_bootstrap(pr.labels, pick.probs, base.probs, m, n_boot=n_boot, seed=seed)
    summary = summarize(pr, df, m, n_boot, seed)
    summary["nested_best"] = nested_summary(df, chosen, m(pr.labels, pick.probs), boot, pick.votes, parts, m)
    summary["in_sample_best"] = in_sample_summary(df, m)
    summary["savings"] = _savings(pr, df, rows, summary, m, n_boot, seed)
    summary["paragraph"] = paragraph(summary)
    # Which metric and why (predict chooses one from the submission format when none is set), and leaky folds.
    summary["metric_reason"] = ("set by the report's metric setting" if metric else
                                pr.info.get("metric_reason") or "the metric pipeline-predict used")
    summary["warnings"] = group_warnings(pr)
    df.attrs.update(metric_reason=summary["metric_reason"], warnings=summary["warnings"])
    if compare:
        df = _with_compared(pr, df, summary, compare, m, (base, n_boot, seed))
    return df, summary, pr


def _with_compared(pr: PredictRun, df: pd.DataFrame, summary: dict[str, Any], compare: Sequence[str | Path],
                   m: Metric, scoring: tuple[Row, int, int]) -> pd.DataFrame:
    """The compared runs' rows appended (paired with the same baseline), their figures in the summary and paragraph."""
    base, n_boot, seed = scoring
    extra = compare_rows(pr, compare, m)
    more = score_rows(pr, extra, base, m, n_boot, seed)
    more["submitted"] = more["best"] = more["in_sample_best"] = False
    summary["compared"] = compared_summary(more, df.loc[df.attrs["baseline_index"]], summary["final_gain"], m)
    sentences = compared_sentences(summary["compared"], summary["final_gain"], m.name)
    summary["paragraph"] = " ".join([summary["paragraph"], *sentences])
    attrs = dict(df.attrs)
    out = pd.concat([df, more], ignore_index=True)
    out.attrs.update(attrs, row_outputs=[*attrs["row_outputs"], *(r.probs for r in extra)])
    return out


def _savings(pr: PredictRun, df: pd.DataFrame, rows: list[Row], summary: dict[str, Any], m: Metric, n_boot: int,
             seed: int) -> dict[str, Any]:
    """Flip effects, policies no better than cheaper ones, and what each member adds to the submitted ensemble.

    Tasks other than class probabilities: flips and policies are compared on the outputs as they are, so not
    for a metric that needs fitted thresholds or cut points; dropping a model is scored on decisions fitted the
    way the rows' are (:func:`pipeline.report.savings.droppable_models`), for every task.
    """
    if needs_decision(pr.task, m):
        out: dict[str, Any] = {"flips": [], "redundant_policies": [],
                               "note": f"flips and policies not compared: {m.name} needs fitted decisions"}
    else:
        out = {"flips": flip_effects(pr, m, n_boot, seed),
               "redundant_policies": redundant_policies(pr, m, n_boot, seed)}
    final = summary["final_gain"]
    if final and len(pr.models) > 1:
        row = rows[int(df.index[df["row"] == final["row"]][0])]
        models = describe_members(pr, row, droppable_models(pr, row, m, n_boot, seed))
        out["droppable"] = {"row": final["row"], "models": models,
                            "recipes": " ".join(recipe_sentences(pr, row, models, m.name))}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _final_probs(pr: PredictRun, df: pd.DataFrame, rows: list[Row]) -> tuple[np.ndarray, str]:
    """OOF predictions of the submitted merge, as the report scored it (cross-fitted when it is fitted).

    An inference-only run (``mode=submit``) may have no OOF rows under the submission policy; the row then
    uses the policy its merge was fitted on, and the title names it.
    """
    hits = df.index[df["submitted"]]
    if len(hits):
        row = rows[int(hits[0])]
        how = ", cross-fitted" if row.rule not in ("mean", "given", "single", "") else ""
        return row.probs, f"submitted: {row.rule} / {pr.policy_names[row.key]}{how}"
    base = next(i for i, r in enumerate(rows) if r.kind == "single" and f"{r.model} / {pr.policy_names[r.key]}"
                == df.attrs["baseline"])
    return rows[base].probs, f"best single model ({df.attrs['baseline']}; the submitted merge has no OOF row)"


def build_report(predict_dir: str | Path, metric: str | None = None, n_boot: int = 1000, seed: int = 0,
                 wandb_spec: LoggerSpec | None = None, compare: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Score the predict folder and write ``report.{md,csv,json}`` and the plots into it.

    Args:
        predict_dir: The ``<sweep>/predict`` folder written by ``pipeline-predict``.
        metric: Competition metric; None uses ``predict.json``'s.
        n_boot: Bootstrap resamples for the intervals.
        seed: Seed of the bootstrap and of the cross-fitting split.
        wandb_spec: When given (and ``predict.json`` records its W&B run under ``wandb``), the table, plots
            and gains are logged to a ``report`` run in the predict run's group.
        compare: Other predict folders on the same OOF rows, one row each (:mod:`pipeline.report.compare`).

    Returns:
        The report frame, one row per (model or ensemble, policy).
    """
    df, summary, pr = compute_report(predict_dir, metric, n_boot, seed, compare)
    out = pr.path
    clean_stale_temps(out)  # what a killed or disk-full report left
    plots = [plot_score_vs_cost(df, summary["metric"], out / "score_vs_cost.png")]
    final, title = df.attrs["final"]
    if pr.task is not None and not pr.task.softmax:  # the task's own plot (pipeline.report.targets)
        base = df.loc[df.attrs["baseline_index"]]
        best_rows = df.index[(df["model"] == base["model"]) & (df["policy_key"] == base["policy_key"])]
        best = (f"best single: {df.attrs['baseline']}", df.attrs["row_outputs"][int(best_rows[0])])
        plots.append(plot_task(pr.task, pr.labels, best, (f"submission: {title}", final), get_metric(summary["metric"]),
                               out / f"{pr.task.kind}.png"))
    else:
        plots.append(plot_confusion(pr.labels, final, pr.classes, f"{title}, {len(pr.labels)} OOF rows",
                                    out / "confusion_matrix.png"))
        plots += _diagnostic_plots(pr, df, final, title, out)
        wrong = plot_most_wrong(pr, final, out / "most_wrong.png")
        plots += [wrong] if wrong else []
    records = [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]
    write_json(out / "report.json", {**summary, "rows": records})
    with atomic_path(out / "report.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(df, summary, [p.name for p in plots]))
    if wandb_spec is not None:
        _log_wandb(pr.info, wandb_spec, df, summary, [out / f"report.{ext}" for ext in ("md", "csv", "json")] + plots)
    return df


def _diagnostic_plots(pr: PredictRun, df: pd.DataFrame, final: np.ndarray, title: str, out: Path) -> list[Path]:
    """Member correlation (under the submission's policy), per-class recall and reliability: baseline vs submission."""
    base = df.loc[df.attrs["baseline_index"]]
    best = (f"best single: {df.attrs['baseline']}", pr.oof[(str(base["model"]), str(base["policy_key"]))])
    submitted = (f"submission: {title}", final)
    key = pr.info["submission_policy"]
    key = key if key in pr.policies or (key == AUTO and pr.mixed) else next(iter(pr.policies))
    (out / "member_correlation.png").unlink(missing_ok=True)  # a stale one from a run with more models
    return [save_figure(fig, path) for fig, path in plot_diagnostics(pr, key, best, submitted, out)]


def _log_wandb(info: dict[str, Any], spec: LoggerSpec, df: pd.DataFrame, summary: dict[str, Any],
               files: list[Path]) -> None:
    """Log the table, the plots and the gains to a report run in the predict run's group; every file as ``report``.

    The report gets a run of its own (``job_type=report``, the predict run's group and tags, a new id) next
    to the predict run's in the predict folder: offline W&B cannot resume a run, and two run folders with
    one id would overwrite each other at ``wandb sync``.
    """
    run = info.get("wandb") or {}
    if not run.get("run_id") or not run.get("dir"):
        log.info("predict.json records no W&B run (wandb.run_id, wandb.dir); not logging to W&B.")
        return
    import wandb

    spec = replace(spec, project=run.get("project") or spec.project, entity=run.get("entity") or spec.entity)
    group = str(run.get("group") or "")
    config = {"predict_run": run["run_id"], "metric": summary["metric"]}
    wb = init_wandb(spec, Path(run["dir"]), "report", group, "report", config, list(run.get("tags") or []))
    try:
        wb.log({"report/table": wandb.Table(dataframe=df),
                **{f"report/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"}})
        for name in ("ensemble_gain", "tta_gain"):
            wb.summary[name] = summary[name]["diff"] if summary[name] else None
        wb.summary["report/best_row"] = summary["best_row"]  # the nested pick
        wb.summary["report/nested_gain"] = summary["nested_best"]["diff"]
        log_files_artifact(wb, "report", "report", files)
    finally:
        wb.finish()
