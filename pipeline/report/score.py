"""Scoring the report's rows: every single model and every merge method, under the TTA policies, on OOF rows.

Every row is scored on the same OOF rows:

- every single model under every TTA policy;
- the equal-weight mean and the Caruana-weighted ensemble under every policy;
- every other merge method (bagged Caruana, optimised weights, rank averaging, stacking, temperature
  scaling, and the submitted rule whatever it is) under the submission's policy and the baseline's;
- the ensemble with the configured weights, when ``predict.json`` used ``given`` weights.

Fitted rows are scored **cross-fitted**, through :func:`pipeline.predict.fitting.cross_fit` with the
ensemble settings ``predict.json`` records (the same rule, parts and seed the predict stage used), so the
submitted rule's row equals the cross-fitted score ``predict.json`` recorded. The row of what was
submitted carries ``submitted``.

Each row's difference to the *baseline* (the best single model without TTA: policy ``none``, or the
policy with the fewest views when ``none`` was not predicted) comes with a 95% paired bootstrap
interval, next to its inference cost (forward passes per image and measured seconds per 1,000 images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from pipeline.core.metrics import Metric, paired_bootstrap, score_all
from pipeline.core.progress import progress
from pipeline.predict.ensemble import SOFTMAX_ONLY
from pipeline.predict.fitting import Rule, cross_fit, rule, rule_name
from pipeline.predict.spec import EnsembleSpec
from pipeline.report.load import AUTO, PredictRun
from pipeline.report.targets import decided, needs_decision, task_metric_names

__all__ = ["KINDS", "OTHER_RULES", "Row", "candidate_rows", "baseline_row", "ensemble_spec", "kind_of", "score_rows",
           "submitted_name", "submitted_row", "submitted_oof", "submitted_policies", "submitted_single", "row_cost",
           "submission_key"]

KINDS = ("single", "ensemble-equal", "ensemble-fitted", "ensemble-given", "ensemble-bagged", "ensemble-optimize",
         "ensemble-rank", "ensemble-stack", "ensemble-temperature")
"""Values of the report's ``kind`` column (``ensemble-fitted`` is Caruana; a submitted rule with temperature
scaling adds ``ensemble-<rule>+temperature``)."""

OTHER_RULES = ("bagged", "optimize", "rank", "stack", "temperature")
"""Merge methods scored under the submission's and the baseline's policy only."""


@dataclass
class Row:
    """One row before scoring: a prediction, the models (with weights) it costs, and the rule that made it."""

    kind: str
    model: str
    key: str
    probs: np.ndarray
    weights: dict[str, float]
    rule: str = ""
    raw: np.ndarray | None = None  # a decided row's outputs before its thresholds or cut points (probs: decided)
    label: str | None = None  # a compared run's row (pipeline.report.compare): its name, policy and cost as given
    policy: str | None = None
    cost: tuple[int, int, float] | None = None


def kind_of(rule_name: str) -> str:
    """The report's ``kind`` of a merge rule's row."""
    return {"mean": "ensemble-equal", "caruana": "ensemble-fitted", "given": "ensemble-given",
            "single": "single", "single+tta": "single"}.get(rule_name, f"ensemble-{rule_name}")


def submitted_name(pr: PredictRun) -> str:
    """The submitted merge rule's name (records from before it was recorded: derived from the settings)."""
    return str(pr.info.get("rule") or rule_name(ensemble_spec(pr)))


def ensemble_spec(pr: PredictRun) -> EnsembleSpec:
    """The ensemble settings ``predict.json`` records, as the predict stage used them."""
    known = {f.name for f in fields(EnsembleSpec)}
    return EnsembleSpec(**{k: v for k, v in pr.info["ensemble"].items() if k in known})


def _merge_row(pr: PredictRun, r: Rule, key: str, models: Sequence[str]) -> Row:
    """A merge rule's row under ``key``: cross-fitted when the rule fits something (the predict stage's split)."""
    probs = [pr.oof[(m, pr.model_key(m, key))] for m in models]
    parts = min(r.spec.cross_fit_parts, len(pr.labels))
    deployed = r.fit(probs, pr.labels)  # the weights a deployment uses decide which models cost inference
    merged = cross_fit(r, probs, pr.labels, parts, r.spec.seed) if r.scored_cross_fitted else deployed.apply(probs)
    weights = dict(zip(models, deployed.weights.tolist())) if deployed.kind == "weighted" else dict.fromkeys(
        models, 1.0 / len(models))
    return Row(kind_of(r.name), kind_of(r.name), key, merged, weights, r.name)


def candidate_rows(pr: PredictRun, metric: Metric, seed: int) -> list[Row]:
    """Every single model under every policy, then the merges (see the module docstring)."""
    models = list(pr.models)
    rows = [Row("single", m, k, pr.oof[(m, k)], {m: 1.0}, "single") for m in models for k in pr.policies]
    if len(models) < 2:
        return rows
    spec, name = ensemble_spec(pr), submitted_name(pr)
    # tta=auto with a policy per model: the submitted mix is one more key (each model under its own choice)
    keys = [*pr.policies, *([AUTO] if pr.mixed else [])]
    for base in ("mean", "caruana"):
        rows += [_merge_row(pr, rule(base, spec, metric.name, pr.task), key, models) for key in keys]
    focus = list(dict.fromkeys(k for k in (submission_key(pr), _base_key(pr)) if k in keys))
    others = [n for n in (*OTHER_RULES, name) if n not in ("mean", "caruana", "given", "single", "single+tta")]
    if metric.name == "log_loss" and name != "rank":
        others = [n for n in others if n != "rank"]  # rank averages orders, not probabilities: no log loss
    if pr.task is not None and not pr.task.softmax:
        others = [n for n in others if n not in SOFTMAX_ONLY]  # merges of class probabilities only
    for other in dict.fromkeys(others):
        r = pr_rule(pr, other, spec, metric)
        rows += [_merge_row(pr, r, key, models) for key in focus]
    if spec.weights == "given":
        rows += [_merge_row(pr, rule("given", spec, metric.name, pr.task), key, models) for key in pr.policies]
    return _decide(pr, rows, metric)


def _decide(pr: PredictRun, rows: list[Row], metric: Metric) -> list[Row]:
    """Rows of a metric that needs thresholds or cut points, each decided cross-fitted (:mod:`pipeline.report.targets`)."""
    task = pr.task
    if task is None or not needs_decision(task, metric):
        return rows
    spec = ensemble_spec(pr)
    parts = min(spec.cross_fit_parts, len(pr.labels))
    for r in rows:
        r.raw, r.probs = r.probs, decided(task, pr.labels, r.probs, metric, parts, spec.seed)
    return rows


def pr_rule(pr: PredictRun, name: str, spec: EnsembleSpec, metric: Metric) -> Rule:
    """The rule ``name``; the submitted one exactly as predict fitted it (its recorded settings)."""
    if name == submitted_name(pr) and spec.combine != "auto":
        return Rule(name, spec, metric.name, pr.task)
    return rule(name, spec, metric.name, pr.task)


def submission_key(pr: PredictRun) -> str:
    key = str(pr.info["submission_policy"])
    if key in pr.policies or key == AUTO:
        return key
    fitted_on = (pr.info.get("weights_fitted_on") or {}).get(key)
    return str(fitted_on) if fitted_on in pr.policies else next(iter(pr.policies))


def _base_key(pr: PredictRun) -> str:
    keys = [k for k, p in pr.policies.items() if p["name"] == "none"]
    return keys[0] if keys else min(pr.policies, key=lambda k: int(pr.policies[k]["views"]))


def submitted_single(pr: PredictRun) -> str | None:
    """The model submitted alone (a single-model rule, or a run of one model); None when a merge was submitted."""
    if submitted_name(pr) in ("single", "single+tta") or len(pr.models) < 2:
        return str(next(iter((pr.info.get("submitted") or {}).get("models") or pr.models)))
    return None


def submitted_row(pr: PredictRun, rows: list[Row]) -> int | None:
    """The index of the row that is what was submitted (its rule, under its policy), when the report has it."""
    name, key = submitted_name(pr), submission_key(pr)
    model = submitted_single(pr)
    if model is not None:
        hits = [i for i, r in enumerate(rows) if r.kind == "single" and r.model == model and r.key == key]
    else:
        hits = [i for i, r in enumerate(rows) if r.rule == name and r.key == key and r.kind != "single"]
    return hits[0] if hits else None


def submitted_policies(pr: PredictRun) -> dict[str, str]:
    """Model → the policy key of its OOF rows in the submission (``tta=auto``: each model its own choice)."""
    key = submission_key(pr)
    return {m: pr.model_key(m, key) for m in pr.models}


def submitted_oof(pr: PredictRun, metric: Metric) -> np.ndarray | None:
    """The OOF rows of what was submitted, as :func:`candidate_rows` makes its row (cross-fitted when fitted).

    Only that one row is built, for a caller that needs the submitted prediction without the whole report
    (the predict run's confusion matrix). None when the OOF files lack its policy (an inference-only run).
    """
    name, key = submitted_name(pr), submission_key(pr)
    single = submitted_single(pr)
    models = list(pr.models) if single is None else [single]
    if any((m, pr.model_key(m, key)) not in pr.oof for m in models):
        return None
    if single is not None:
        return pr.oof[(single, pr.model_key(single, key))]
    spec = ensemble_spec(pr)
    r = rule(name, spec, metric.name, pr.task) if name in ("mean", "caruana", "given") else pr_rule(pr, name, spec, metric)
    return _merge_row(pr, r, key, models).probs


def baseline_row(pr: PredictRun, rows: list[Row], metric: Metric) -> Row:
    """The best single model without TTA (policy ``none``, else the policy with the fewest views)."""
    keys = [k for k, p in pr.policies.items() if p["name"] == "none"]
    if not keys:
        fewest = min(int(p["views"]) for p in pr.policies.values())
        keys = [k for k, p in pr.policies.items() if int(p["views"]) == fewest]
    singles = [r for r in rows if r.kind == "single" and r.key in keys]
    scores = [metric(pr.labels, r.probs) for r in singles]
    pick = int(np.argmax(scores) if metric.greater_is_better else np.argmin(scores))  # ties: first
    return singles[pick]


def row_cost(pr: PredictRun, row: Row) -> tuple[int, int, float]:
    """Fold members, forward passes per image and seconds per 1,000 images of the models a row runs."""
    used = [m for m, w in row.weights.items() if w > 0]
    members = sum(len(pr.models[m]) for m in used)
    passes = sum(len(pr.models[m]) * int(pr.policies[pr.model_key(m, row.key)]["views"]) for m in used)
    timings = pr.info.get("timings") or {}
    seconds = [timings.get(m, {}).get(pr.model_key(m, row.key), {}).get("seconds_per_1000") for m in used]
    return members, passes, math.nan if None in seconds else float(sum(seconds))


def score_rows(
    pr: PredictRun, rows: list[Row], base: Row, metric: Metric, n_boot: int, seed: int
) -> pd.DataFrame:
    """Score each row with every metric and bootstrap its difference to the baseline."""
    records = []
    for r in progress(rows, len(rows), f"Bootstrapping {len(rows)} rows ({n_boot} resamples each)", unit="row"):
        members, passes, seconds = r.cost or row_cost(pr, r)
        boot = paired_bootstrap(pr.labels, r.probs, base.probs, metric, n_boot=n_boot, seed=seed,
                                task=None if pr.task is None else pr.task.kind)
        names = task_metric_names(pr.task, metric.name)
        scores = score_all(pr.labels, r.probs if r.raw is None else r.raw, names, **_task_kw(pr))
        scores[metric.name] = float(metric(pr.labels, r.probs))  # a decided row: on its decisions
        weights = ", ".join(f"{m}={w:.2f}" for m, w in r.weights.items() if w > 0)
        records.append({
            "row": r.label or f"{r.model} / {pr.policy_names[r.key]}", "kind": r.kind, "rule": r.rule, "model": r.model,
            "policy": r.policy or pr.policy_names[r.key], "policy_key": r.key, "members": members, "weights": weights,
            **scores,
            "diff_vs_best_single": boot.diff, "ci_low": boot.low, "ci_high": boot.high,
            "forward_passes_per_image": passes, "sec_per_1000_images": seconds,
        })
    df = pd.DataFrame.from_records(records)
    column = df[metric.name]
    df["best"] = df.index == (column.idxmax() if metric.greater_is_better else column.idxmin())
    return df


def _task_kw(pr: PredictRun) -> dict[str, str]:
    return {} if pr.task is None else {"task": pr.task.kind}
