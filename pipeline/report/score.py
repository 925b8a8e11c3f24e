"""Scoring the report's rows: every single model and every ensemble kind, under every TTA policy, on OOF rows.

Every row is scored on the same OOF rows:

- every single model under every TTA policy;
- the ensemble with equal weights under every policy;
- the ensemble with Caruana weights under every policy, scored **cross-fitted**: the OOF rows are
  split into :data:`CROSS_FIT_PARTS` stratified parts, each part is predicted with weights fitted on
  the other parts, and the metric is computed on the concatenation. Weights fitted and scored on the
  same rows would flatter the ensemble;
- the ensemble with the configured weights, when ``predict.json`` used ``given`` weights.

Each row's difference to the *baseline* (the best single model without TTA: policy ``none``, or the
policy with the fewest views when ``none`` was not predicted) comes with a 95% paired bootstrap
interval, next to its inference cost (forward passes per image and measured seconds per 1,000 images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core.metrics import METRICS, Metric, get_metric, paired_bootstrap, score_all
from pipeline.core.progress import progress
from pipeline.core.reduce import merge_members
from pipeline.data.folds import make_folds
from pipeline.predict.ensemble import caruana_select
from pipeline.report.load import AUTO, PredictRun

__all__ = [
    "CROSS_FIT_PARTS", "KINDS", "Row", "cross_fit_parts", "cross_fit_predict", "candidate_rows", "baseline_row",
    "score_rows",
]

CROSS_FIT_PARTS = 5
"""Stratified parts of the OOF rows for scoring the fitted ensemble out of sample."""

KINDS = ("single", "ensemble-equal", "ensemble-fitted", "ensemble-given")
"""Values of the report's ``kind`` column."""



@dataclass
class Row:
    """One row before scoring: a prediction and the models (with weights) it costs."""

    kind: str
    model: str
    key: str
    probs: np.ndarray
    weights: dict[str, float]


def cross_fit_parts(labels: np.ndarray, n_parts: int = CROSS_FIT_PARTS, seed: int = 0) -> np.ndarray:
    """The part (``0..n_parts-1``) of each row: stratified, seeded; the one split every cross-fitted rule uses."""
    if not 2 <= n_parts <= len(labels):
        raise ValueError(f"cross-fitting needs 2 <= n_parts <= {len(labels)} rows; got n_parts={n_parts}")
    return make_folds([str(i) for i in range(len(labels))], labels, n_parts, seed, 0.2)["fold"].to_numpy()


def cross_fit_predict(
    member_probs: Sequence[np.ndarray],
    labels: np.ndarray,
    metric: Metric,
    n_parts: int = CROSS_FIT_PARTS,
    seed: int = 0,
    n_rounds: int = 50,
    method: str = "prob_mean",
) -> np.ndarray:
    """Out-of-sample predictions of a Caruana-weighted ensemble.

    The rows are split into ``n_parts`` stratified parts (:func:`pipeline.data.folds.make_folds`, seeded);
    each part is merged with weights fitted (:func:`pipeline.predict.ensemble.caruana_select`) on the other
    parts only, so no row's prediction has seen that row's label.

    Args:
        member_probs: One ``[N, K]`` array per model.
        labels: ``[N]`` integer labels.
        metric: Metric the weights are fitted for (its direction is respected).
        n_parts: Number of parts, at least 2 and at most N.
        seed: Seed of the split.
        n_rounds: Caruana rounds.
        method: Reduction over models.

    Returns:
        ``[N, K]`` merged probabilities, rows in input order.
    """
    parts = cross_fit_parts(labels, n_parts, seed)
    out = np.empty_like(np.asarray(member_probs[0], dtype=np.float64))
    for part in range(n_parts):
        test, fit = parts == part, parts != part
        fit_probs = [p[fit] for p in member_probs]
        weights = caruana_select(fit_probs, labels[fit], n_rounds, metric=metric, method=method)
        out[test] = merge_members([p[test] for p in member_probs], weights=weights, method=method).numpy()
    return out


def candidate_rows(pr: PredictRun, metric: Metric, seed: int) -> list[Row]:
    """Every single model, then each ensemble kind, under every policy."""
    models = list(pr.models)
    rows = [Row("single", m, k, pr.oof[(m, k)], {m: 1.0}) for m in models for k in pr.policies]
    if len(models) < 2:
        return rows
    ens = pr.info["ensemble"]
    rounds = int(ens.get("caruana_rounds", 50))
    fit_metric = get_metric(ens.get("fit_metric") or metric.name)  # the weights are fitted as predict fits them
    # tta=auto with a policy per model: the submitted mix is one more key (each model under its own choice)
    keys = [*pr.policies, *([AUTO] if pr.mixed else [])]
    for key in keys:
        probs = [pr.oof[(m, pr.model_key(m, key))] for m in models]
        merged = merge_members(probs, method=pr.method).numpy()
        equal = dict.fromkeys(models, 1.0 / len(models))
        rows.append(Row("ensemble-equal", "ensemble-equal", key, merged, equal))
    for key in keys:
        probs = [pr.oof[(m, pr.model_key(m, key))] for m in models]
        crossed = cross_fit_predict(probs, pr.labels, fit_metric, CROSS_FIT_PARTS, seed, rounds, pr.method)
        # The weights a deployment would use (fitted on all rows) decide which models cost inference.
        full = caruana_select(probs, pr.labels, rounds, metric=fit_metric, method=pr.method)
        deployed = dict(zip(models, full.tolist()))
        rows.append(Row("ensemble-fitted", "ensemble-fitted", key, crossed, deployed))
    if ens.get("weights") == "given":
        for key in pr.policies:
            weights = pr.weights(key)
            probs = [pr.oof[(m, key)] for m in models]
            merged = merge_members(probs, weights=[weights[m] for m in models], method=pr.method).numpy()
            rows.append(Row("ensemble-given", "ensemble-given", key, merged, weights))
    return rows


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


def _cost(pr: PredictRun, row: Row) -> tuple[int, int, float]:
    """Fold members, forward passes per image and seconds per 1,000 images of the models a row runs."""
    used = [m for m, w in row.weights.items() if w > 0]
    members = sum(len(pr.models[m]) for m in used)
    passes = sum(len(pr.models[m]) * int(pr.policies[pr.model_key(m, row.key)]["views"]) for m in used)
    timings = pr.info.get("timings") or {}
    seconds = [timings.get(m, {}).get(pr.model_key(m, row.key), {}).get("seconds_per_1000") for m in used]
    return members, passes, math.nan if None in seconds else float(sum(seconds))


def _metric_names(metric: str) -> list[str]:
    return [metric, *(name for name in METRICS if name != metric)]


def score_rows(
    pr: PredictRun, rows: list[Row], base: Row, metric: Metric, n_boot: int, seed: int
) -> pd.DataFrame:
    """Score each row with every metric and bootstrap its difference to the baseline."""
    records = []
    for r in progress(rows, len(rows), f"Bootstrapping {len(rows)} rows ({n_boot} resamples each)", unit="row"):
        members, passes, seconds = _cost(pr, r)
        boot = paired_bootstrap(pr.labels, r.probs, base.probs, metric, n_boot=n_boot, seed=seed)
        weights = ", ".join(f"{m}={w:.2f}" for m, w in r.weights.items() if w > 0)
        records.append({
            "row": f"{r.model} / {pr.policy_names[r.key]}", "kind": r.kind, "model": r.model,
            "policy": pr.policy_names[r.key], "policy_key": r.key, "members": members, "weights": weights,
            **score_all(pr.labels, r.probs, _metric_names(metric.name)),
            "diff_vs_best_single": boot.diff, "ci_low": boot.low, "ci_high": boot.high,
            "forward_passes_per_image": passes, "sec_per_1000_images": seconds,
        })
    df = pd.DataFrame.from_records(records)
    column = df[metric.name]
    df["best"] = df.index == (column.idxmax() if metric.greater_is_better else column.idxmin())
    return df
