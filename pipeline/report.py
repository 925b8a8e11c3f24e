"""``pipeline-report``: what the ensemble and the TTA actually bought, and at what inference cost.

The report is rebuilt from the files ``pipeline-predict`` left in ``<sweep>/predict/`` alone
(``predict.json`` and the model-level OOF predictions in ``oof/``), so it can be regenerated at any
time and writes the same ``report.md``/``.csv``/``.json`` bytes each time. Every row is scored on
the same OOF rows:

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

Outputs, in the predict folder::

    report.md  report.csv  report.json
    score_vs_cost.png  confusion_matrix.png  most_wrong.png (when the training images are found)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import to_dataclass
from pipeline.data import DataSpec, load_rgb, make_folds, read_train_table
from pipeline.ensemble import caruana_select, merge_members
from pipeline.loggers import LoggerSpec
from pipeline.metrics import METRICS, Metric, get_metric, paired_bootstrap, score_all
from pipeline.predictions import read_predictions
from pipeline.utils import atomic_path, read_json, safe_name, write_json

__all__ = [
    "CROSS_FIT_PARTS",
    "KINDS",
    "PredictRun",
    "load_predict_run",
    "cross_fit_predict",
    "compute_report",
    "plot_score_vs_cost",
    "plot_confusion",
    "plot_most_wrong",
    "build_report",
    "render_table",
    "run",
    "main",
]

log = logging.getLogger(__name__)

CROSS_FIT_PARTS = 5
"""Stratified parts of the OOF rows for scoring the fitted ensemble out of sample."""

KINDS = ("single", "ensemble-equal", "ensemble-fitted", "ensemble-given")
"""Values of the report's ``kind`` column."""

MOST_WRONG = 16
# Shown beside the competition metric in report.md; report.csv holds every registered metric.
_TABLE_METRICS = ("accuracy", "log_loss", "macro_f1")
_REQUIRED_KEYS = (
    "members", "models", "policies", "submission_policy", "ensemble", "metric", "weights", "classes",
)


# --------------------------------------------------------------------------- reading a predict folder


@dataclass
class PredictRun:
    """A predict folder read back: ``predict.json`` plus every model's OOF predictions.

    Attributes:
        path: The predict folder.
        info: ``predict.json`` as written by ``pipeline-predict``.
        classes: Class names, in probability-column order.
        ids: OOF row ids shared by every model and policy, in file order.
        labels: ``[N]`` integer labels of those rows.
        oof: ``(model, policy key) → [N, K]`` probabilities, rows aligned with ``ids``.
        policy_names: Display name of each policy key (its name, or the key when names repeat).
    """

    path: Path
    info: dict[str, Any]
    classes: list[str]
    ids: list[str]
    labels: np.ndarray
    oof: dict[tuple[str, str], np.ndarray]
    policy_names: dict[str, str]

    @property
    def models(self) -> dict[str, list[str]]:
        """Model → its fold members."""
        return dict(self.info["models"])

    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        """Policy key → the policy's settings, ``views`` included."""
        return dict(self.info["policies"])

    @property
    def method(self) -> str:
        """The reduction ``pipeline-predict`` merged models with."""
        return str(self.info["ensemble"].get("method", "prob_mean"))

    def weights(self, key: str) -> dict[str, float]:
        """The submission's model weights under policy ``key`` (equal when predict.json has none)."""
        saved = self.info["weights"].get(key)
        if not saved:
            return dict.fromkeys(self.models, 1.0 / len(self.models))
        return {m: float(saved.get(m, 0.0)) for m in self.models}


def _policy_names(policies: dict[str, dict[str, Any]]) -> dict[str, str]:
    names = [p["name"] for p in policies.values()]
    return {k: p["name"] if names.count(p["name"]) == 1 else k for k, p in policies.items()}


_Oof = tuple[list[str], np.ndarray, np.ndarray]


def _read_oof(path: Path, info: dict[str, Any]) -> dict[tuple[str, str], _Oof]:
    out = {}
    for model in info["models"]:
        for key in info["policies"]:
            file = path / "oof" / f"{safe_name(model)}__{key}.csv"
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing: re-run pipeline-predict for this folder.")
            ids, probs, labels = read_predictions(file, info["classes"])
            if labels is None:
                raise ValueError(f"{file} has no 'label' column; OOF predictions need labels.")
            out[(model, key)] = (ids, probs, labels)
    return out


def load_predict_run(predict_dir: str | Path) -> PredictRun:
    """Read ``predict.json`` and the OOF files, aligned on the rows every model predicted.

    Models trained on different folds may not share every OOF row; the report then keeps the common
    rows (with a warning) so that every comparison is paired.

    Raises:
        FileNotFoundError: No ``predict.json`` or a missing OOF file.
        ValueError: A malformed ``predict.json`` or labels that disagree between files.
    """
    path = Path(predict_dir)
    if not (path / "predict.json").is_file():
        raise FileNotFoundError(
            f"No predict.json in {path}: run pipeline-predict first, or set predict_dir=..."
        )
    info = read_json(path / "predict.json")
    missing = [k for k in _REQUIRED_KEYS if k not in info]
    if missing:
        raise ValueError(
            f"{path / 'predict.json'} lacks the keys {missing}; was it written by pipeline-predict?"
        )
    raw = _read_oof(path, info)
    first_ids = next(iter(raw.values()))[0]
    common = set(first_ids).intersection(*(set(ids) for ids, _, _ in raw.values()))
    ids = [i for i in first_ids if i in common]
    if any(len(v[0]) != len(ids) for v in raw.values()):
        log.warning("Models predicted different OOF rows; the report scores the %d shared rows.", len(ids))
    if not ids:
        raise ValueError(f"The OOF files in {path / 'oof'} share no rows; nothing to compare.")
    oof, labels = {}, None
    for (model, key), (file_ids, probs, file_labels) in raw.items():
        pos = {i: r for r, i in enumerate(file_ids)}
        rows = np.array([pos[i] for i in ids])
        if labels is not None and not np.array_equal(labels, file_labels[rows]):
            raise ValueError(f"oof/{safe_name(model)}__{key}.csv has other labels than the other OOF files.")
        labels = file_labels[rows]
        oof[(model, key)] = probs[rows]
    assert labels is not None
    return PredictRun(path, info, list(info["classes"]), ids, labels, oof, _policy_names(info["policies"]))


# --------------------------------------------------------------------------- rows


@dataclass
class _Row:
    """One row before scoring: a prediction and the models (with weights) it costs."""

    kind: str
    model: str
    key: str
    probs: np.ndarray
    weights: dict[str, float]


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

    The rows are split into ``n_parts`` stratified parts (:func:`pipeline.data.make_folds`, seeded);
    each part is merged with weights fitted (:func:`pipeline.ensemble.caruana_select`) on the other
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
    if not 2 <= n_parts <= len(labels):
        raise ValueError(f"cross-fitting needs 2 <= n_parts <= {len(labels)} rows; got n_parts={n_parts}")
    parts = make_folds([str(i) for i in range(len(labels))], labels, n_parts, seed, 0.2)["fold"].to_numpy()
    out = np.empty_like(np.asarray(member_probs[0], dtype=np.float64))
    for part in range(n_parts):
        test, fit = parts == part, parts != part
        fit_probs = [p[fit] for p in member_probs]
        weights = caruana_select(fit_probs, labels[fit], n_rounds, metric=metric, method=method)
        out[test] = merge_members([p[test] for p in member_probs], weights=weights, method=method).numpy()
    return out


def _candidate_rows(pr: PredictRun, metric: Metric, seed: int) -> list[_Row]:
    """Every single model, then each ensemble kind, under every policy."""
    models = list(pr.models)
    rows = [_Row("single", m, k, pr.oof[(m, k)], {m: 1.0}) for m in models for k in pr.policies]
    if len(models) < 2:
        return rows
    ens = pr.info["ensemble"]
    rounds = int(ens.get("caruana_rounds", 50))
    fit_metric = get_metric(ens.get("fit_metric") or metric.name)  # the weights are fitted as predict fits them
    for key in pr.policies:
        probs = [pr.oof[(m, key)] for m in models]
        merged = merge_members(probs, method=pr.method).numpy()
        equal = dict.fromkeys(models, 1.0 / len(models))
        rows.append(_Row("ensemble-equal", "ensemble-equal", key, merged, equal))
    for key in pr.policies:
        probs = [pr.oof[(m, key)] for m in models]
        crossed = cross_fit_predict(probs, pr.labels, fit_metric, CROSS_FIT_PARTS, seed, rounds, pr.method)
        # The weights a deployment would use (fitted on all rows) decide which models cost inference.
        full = caruana_select(probs, pr.labels, rounds, metric=fit_metric, method=pr.method)
        deployed = dict(zip(models, full.tolist()))
        rows.append(_Row("ensemble-fitted", "ensemble-fitted", key, crossed, deployed))
    if ens.get("weights") == "given":
        for key in pr.policies:
            weights = pr.weights(key)
            probs = [pr.oof[(m, key)] for m in models]
            merged = merge_members(probs, weights=[weights[m] for m in models], method=pr.method).numpy()
            rows.append(_Row("ensemble-given", "ensemble-given", key, merged, weights))
    return rows


def _baseline(pr: PredictRun, rows: list[_Row], metric: Metric) -> _Row:
    """The best single model without TTA (policy ``none``, else the policy with the fewest views)."""
    keys = [k for k, p in pr.policies.items() if p["name"] == "none"]
    if not keys:
        fewest = min(int(p["views"]) for p in pr.policies.values())
        keys = [k for k, p in pr.policies.items() if int(p["views"]) == fewest]
    singles = [r for r in rows if r.kind == "single" and r.key in keys]
    scores = [metric(pr.labels, r.probs) for r in singles]
    pick = int(np.argmax(scores) if metric.greater_is_better else np.argmin(scores))  # ties: first
    return singles[pick]


def _cost(pr: PredictRun, row: _Row) -> tuple[int, int, float]:
    """Fold members, forward passes per image and seconds per 1,000 images of the models a row runs."""
    used = [m for m, w in row.weights.items() if w > 0]
    members = sum(len(pr.models[m]) for m in used)
    passes = members * int(pr.policies[row.key]["views"])
    timings = pr.info.get("timings") or {}
    seconds = [timings.get(m, {}).get(row.key, {}).get("seconds_per_1000") for m in used]
    return members, passes, math.nan if None in seconds else float(sum(seconds))


def _metric_names(metric: str) -> list[str]:
    return [metric, *(name for name in METRICS if name != metric)]


def _score_rows(
    pr: PredictRun, rows: list[_Row], base: _Row, metric: Metric, n_boot: int, seed: int
) -> pd.DataFrame:
    """Score each row with every metric and bootstrap its difference to the baseline."""
    records = []
    for r in rows:
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


# --------------------------------------------------------------------------- summary


def _verdict(diff: float, low: float, high: float, greater_is_better: bool) -> str:
    """``helped``, ``hurt`` or ``unclear`` (the interval includes 0, or the diff disagrees with it)."""
    if low <= 0 <= high:
        return "unclear"
    ci_better = low > 0 if greater_is_better else high < 0
    diff_better = diff > 0 if greater_is_better else diff < 0
    if ci_better == diff_better:
        return "helped" if ci_better else "hurt"
    return "unclear"


def _gain(row: pd.Series, base: pd.Series, greater_is_better: bool) -> dict[str, Any]:
    """One comparison with the baseline: difference, interval, verdict and cost ratio."""
    sec, base_sec = row["sec_per_1000_images"], base["sec_per_1000_images"]
    by_time = bool(np.isfinite(sec) and np.isfinite(base_sec) and base_sec > 0)
    ratio = sec / base_sec if by_time else row["forward_passes_per_image"] / base["forward_passes_per_image"]
    return {
        "row": row["row"], "diff": float(row["diff_vs_best_single"]), "ci_low": float(row["ci_low"]),
        "ci_high": float(row["ci_high"]), "members": int(row["members"]), "cost_ratio": float(ratio),
        "cost_by": "seconds" if by_time else "forward_passes",
        "verdict": _verdict(row["diff_vs_best_single"], row["ci_low"], row["ci_high"], greater_is_better),
    }


def _pick(df: pd.DataFrame, kind: str, key: str, model: str | None = None) -> pd.Series | None:
    hit = df[(df["kind"] == kind) & (df["policy_key"] == key) & ((df["model"] == model) if model else True)]
    return None if hit.empty else hit.iloc[0]


def _tta_key(pr: PredictRun, base_key: str) -> str | None:
    """The TTA to judge: the submission's policy, or the one with the most views if that is the baseline's."""
    submit = pr.info["submission_policy"]
    if submit != base_key and submit in pr.policies:
        return str(submit)
    others = [k for k in pr.policies if k != base_key]
    return max(others, key=lambda k: int(pr.policies[k]["views"])) if others else None


def _summary(pr: PredictRun, df: pd.DataFrame, metric: Metric, n_boot: int, seed: int) -> dict[str, Any]:
    base_row = df.loc[df.attrs["baseline_index"]]
    weights_kind = pr.info["ensemble"].get("weights", "equal")
    ens_kind = {"caruana": "ensemble-fitted", "fitted": "ensemble-fitted", "given": "ensemble-given"}.get(
        weights_kind, "ensemble-equal")
    gib = metric.greater_is_better
    ens = _pick(df, ens_kind, base_row["policy_key"])
    tta_key = _tta_key(pr, base_row["policy_key"])
    tta = None if tta_key is None else _pick(df, "single", tta_key, base_row["model"])
    submit = pr.info["submission_policy"]
    if len(pr.models) > 1:
        final = _pick(df, ens_kind, submit)
    else:
        final = _pick(df, "single", submit, base_row["model"])
    return {
        "metric": metric.name, "greater_is_better": gib, "n_rows": len(pr.labels),
        "n_classes": len(pr.classes), "n_boot": n_boot, "seed": seed,
        "baseline": {"row": base_row["row"], "score": float(base_row[metric.name]),
                     "rule": "best single model without TTA (policy 'none', else the fewest views)"},
        "ensemble_gain": None if ens is None else _gain(ens, base_row, gib),
        "tta_gain": None if tta is None else {**_gain(tta, base_row, gib),
                                              "views": int(pr.policies[str(tta_key)]["views"])},
        "final_gain": None if final is None else _gain(final, base_row, gib),
        "best_row": str(df.loc[df["best"], "row"].iloc[0]),
        "fitted_ensemble": {"scoring": "cross-fitted", "parts": CROSS_FIT_PARTS, "seed": seed,
                            "caruana_rounds": int(pr.info["ensemble"].get("caruana_rounds", 50)),
                            "method": pr.method, "fit_metric": pr.info["ensemble"].get("fit_metric") or metric.name},
        "leaderboard": pr.info.get("leaderboard"),
    }


def _sentence(subject: str, what: str, gain: dict[str, Any], metric: str) -> str:
    """``<what> changed <metric> by … at n× the cost: <subject> helped / did not help.``"""
    cost = "the inference cost" if gain["cost_by"] == "seconds" else "the forward passes"
    change = (
        f"{what} changed {metric} by {gain['diff']:+.4f} "
        f"(95% CI {gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}) at {gain['cost_ratio']:.1f}× {cost}"
    )
    if gain["verdict"] == "helped":
        return f"{change}: {subject} helped."
    if gain["verdict"] == "hurt":
        return f"{change}: {subject} did not help, it made {metric} worse."
    return f"{change}: {subject} did not help measurably (the 95% interval includes 0)."


def _paragraph(summary: dict[str, Any]) -> str:
    """The plain-words verdict on ensembling and TTA, generated from the numbers."""
    m, base, ens, tta = summary["metric"], summary["baseline"], summary["ensemble_gain"], summary["tta_gain"]
    direction = "higher" if summary["greater_is_better"] else "lower"
    parts = [f"Baseline: the best single model without TTA, {base['row']} ({m} {base['score']:.4f}; "
             f"{direction} is better)."]
    if ens:
        parts.append(_sentence("ensembling", f"Ensembling ({ens['row']}, {ens['members']} members)", ens, m))
    else:
        parts.append("There is only one model, so ensembling was not measured.")
    if tta:
        parts.append(_sentence("TTA", f"TTA ({tta['row']}, {tta['views']} views)", tta, m))
    else:
        parts.append("Only one TTA policy was predicted, so TTA was not measured.")
    final = summary["final_gain"]
    if final and ens and final["row"] != ens["row"] and (not tta or final["row"] != tta["row"]):
        parts.append(_sentence("the submission", f"The submission ({final['row']})", final, m))
    if ens and tta and ens["verdict"] == tta["verdict"] == "helped":
        # Gain per extra unit of cost: the trade the seed papers point at (ensembles usually win it).
        per = {name: abs(g["diff"]) / max(g["cost_ratio"] - 1.0, 1e-9)
               for name, g in (("ensembling", ens), ("TTA", tta))}
        parts.append(f"Per extra unit of inference cost, {max(per, key=per.__getitem__)} bought more.")
    return " ".join(parts)


# --------------------------------------------------------------------------- rendering


def _fmt(value: Any, spec: str) -> str:
    missing = value is None or (isinstance(value, float) and not np.isfinite(value))
    return "–" if missing else format(value, spec)


def render_table(df: pd.DataFrame, metric: str | None = None) -> str:
    """The report table as markdown (for ``report.md`` and the console).

    Args:
        df: A frame returned by :func:`compute_report` or :func:`build_report`.
        metric: Competition metric column; None reads ``df.attrs["metric"]``.
    """
    metric = metric or df.attrs.get("metric")
    if metric is None or metric not in df.columns:
        raise ValueError(f"render_table needs the metric column; got {metric!r}, columns {list(df.columns)}")
    others = [m for m in _TABLE_METRICS if m != metric and m in df.columns]
    head = ["best", "row", "kind", metric, "Δ vs baseline [95% CI]", "passes/img", "s/1000 img", *others]
    align = [":-:", "---", "---"] + ["--:"] * (len(head) - 3)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for _, r in df.iterrows():
        diff = "baseline" if r["row"] == df.attrs.get("baseline") else (
            f"{r['diff_vs_best_single']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
        cells = ["★" if r["best"] else "", r["row"], r["kind"], _fmt(r[metric], ".4f"), diff,
                 str(r["forward_passes_per_image"]), _fmt(r["sec_per_1000_images"], ".3g"),
                 *(_fmt(r[m], ".4f") for m in others)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(df: pd.DataFrame, summary: dict[str, Any], plots: list[str]) -> str:
    m, fit = summary["metric"], summary["fitted_ensemble"]
    lb = summary["leaderboard"]
    lb_line = (f"**Leaderboard:** {lb['metric']} = {lb['score']:.4f} on {lb['rows']} test images "
               "(leaderboard score on the hidden solution file, not validation)." if lb else
               "**Leaderboard:** none recorded in predict.json.")
    lines = [
        "# Ensemble and TTA report", "",
        f"**Metric:** {m} ({'higher' if summary['greater_is_better'] else 'lower'} is better), on "
        f"{summary['n_rows']} out-of-fold rows, {summary['n_classes']} classes.", "",
        "**Baseline:** the best single model without TTA (policy `none`, or the policy with the fewest "
        f"views when `none` was not predicted): `{summary['baseline']['row']}`. Δ is each row minus the "
        f"baseline, with a 95% paired bootstrap interval ({summary['n_boot']} resamples, "
        f"seed {summary['seed']}).", "",
        f"**Fitted ensemble:** Caruana weights ({fit['caruana_rounds']} rounds, {fit['method']}, fitted for "
        f"{fit['fit_metric']}), scored "
        f"cross-fitted: the OOF rows are split into {fit['parts']} stratified parts (seed {fit['seed']}); "
        f"each part is predicted with weights fitted on the other {fit['parts'] - 1} and {m} is computed on "
        "the concatenation. Its cost counts the models kept by the weights fitted on all rows.", "",
        lb_line, "",
        "## What ensembling and TTA bought", "", summary["paragraph"], "",
        "## Scores and inference cost", "", render_table(df), "",
        f"★ the best row by {m}. passes/img = TTA views × fold members, summed over the ensemble's models; "
        "s/1000 img = seconds per 1,000 test images measured by pipeline-predict, summed over models.", "",
    ]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def plot_score_vs_cost(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """Metric against seconds per 1,000 images (forward passes without timings); every point named."""
    timed = bool(np.isfinite(df["sec_per_1000_images"]).all() and (df["sec_per_1000_images"] > 0).all())
    x = df["sec_per_1000_images"] if timed else df["forward_passes_per_image"].astype(float)
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    marks = [("o", "tab:blue"), ("s", "tab:orange"), ("D", "tab:green"), ("^", "tab:purple")]
    styles = dict(zip(KINDS, marks))
    for kind, group in df.groupby("kind", sort=False):
        marker, color = styles.get(str(kind), ("o", "grey"))
        ax.scatter(x[group.index], group[metric], marker=marker, color=color, label=str(kind), s=40, zorder=3)
    base = df["row"] == df.attrs.get("baseline")
    if base.any():
        ax.scatter(x[base], df.loc[base, metric], s=160, facecolors="none", edgecolors="black",
                   label="baseline")
    for i, r in df.iterrows():
        ax.annotate(("★ " if r["best"] else "") + r["row"], (x[i], r[metric]), xytext=(4, 3),
                    textcoords="offset points", fontsize=7)
    if x.max() / max(x.min(), 1e-12) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("seconds per 1,000 test images" if timed else "forward passes per image")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs inference cost")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], title: str, path: Path
) -> Path:
    """Confusion matrix (rows: true class, colour: row share, text: counts)."""
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels, probs.argmax(axis=1)), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(5.0, 0.45 * k + 2)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 25:  # beyond that the counts are unreadable; the colours still show the pattern
        for (i, j), c in np.ndenumerate(counts):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _image_paths(pr: PredictRun, ids: Sequence[str]) -> tuple[dict[str, Path] | None, str]:
    """Training image of each id, found through a member folder's ``config.yaml``; else None and why."""
    why = "predict.json lists no member folders"
    for folder in pr.info["members"].values():
        try:
            cfg = OmegaConf.load(Path(folder) / "config.yaml")
            table = read_train_table(to_dataclass(DataSpec, cfg.data))
        except (OSError, ValueError, TypeError, KeyError, OmegaConfBaseException) as err:
            why = f"{folder}: {err}"
            continue
        paths = dict(zip(table.ids, table.paths))
        if all(i in paths for i in ids):
            return {i: paths[i] for i in ids}, ""
        why = f"{folder}/config.yaml: its training table lacks some OOF ids"
    return None, why


def plot_most_wrong(pr: PredictRun, probs: np.ndarray, path: Path, n: int = MOST_WRONG) -> Path | None:
    """Grid of the validation images the final ensemble got wrong with the highest confidence.

    Returns None (and removes a stale plot) when there are no wrong rows or the images are not found.
    """
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(pred != pr.labels)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    paths, why = _image_paths(pr, [pr.ids[i] for i in wrong]) if len(wrong) else (None, "")
    if paths is None:
        if len(wrong):
            log.warning("Skipping %s: training images not found through the member folders (%s).",
                        path.name, why)
        path.unlink(missing_ok=True)
        return None
    cols = min(4, len(wrong))
    rows = math.ceil(len(wrong) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows))
    for slot, i in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, slot + 1)
        ax.imshow(load_rgb(paths[pr.ids[i]]))
        true, guess = pr.classes[pr.labels[i]], pr.classes[pred[i]]
        ax.set_title(f"{pr.ids[i]}\ntrue {true}\npred {guess} ({conf[i]:.2f})", fontsize=7)
        ax.axis("off")
    fig.suptitle("Most confidently wrong validation images (final ensemble)", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- the report


def compute_report(predict_dir: str | Path, metric: str | None = None, n_boot: int = 1000,
                   seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any], PredictRun]:
    """Score every row and summarise, writing nothing.

    Returns:
        The report frame (``attrs``: metric, baseline), the summary (``report.json`` without rows),
        and the predict folder as read.
    """
    pr = load_predict_run(predict_dir)
    m = get_metric(metric or pr.info["metric"])
    rows = _candidate_rows(pr, m, seed)
    base = _baseline(pr, rows, m)
    df = _score_rows(pr, rows, base, m, n_boot, seed)
    df.attrs.update(metric=m.name, baseline=f"{base.model} / {pr.policy_names[base.key]}",
                    baseline_index=next(i for i, r in enumerate(rows) if r is base))
    summary = _summary(pr, df, m, n_boot, seed)
    summary["paragraph"] = _paragraph(summary)
    return df, summary, pr


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _final_probs(pr: PredictRun) -> tuple[np.ndarray, str]:
    """OOF predictions of the submitted ensemble: submission policy, submission weights."""
    key = pr.info["submission_policy"]
    weights = pr.weights(key)
    probs = merge_members([pr.oof[(m, key)] for m in pr.models], list(weights.values()), pr.method)
    kind = pr.info["ensemble"].get("weights", "equal")
    # Submitted Caruana weights were fitted on these very rows: say so rather than hide it.
    note = ", weights fitted on these rows" if kind in ("caruana", "fitted") else ""
    return probs.numpy(), f"final ensemble ({kind} weights / {pr.policy_names[key]}{note})"


def build_report(predict_dir: str | Path, metric: str | None = None, n_boot: int = 1000, seed: int = 0,
                 wandb_spec: LoggerSpec | None = None) -> pd.DataFrame:
    """Score the predict folder and write ``report.{md,csv,json}`` and the plots into it.

    Args:
        predict_dir: The ``<sweep>/predict`` folder written by ``pipeline-predict``.
        metric: Competition metric; None uses ``predict.json``'s.
        n_boot: Bootstrap resamples for the intervals.
        seed: Seed of the bootstrap and of the cross-fitting split.
        wandb_spec: When given (and ``predict.json`` records ``wandb_run_id`` and ``wandb_dir``), the
            predict run is resumed and the table, plots and gains are logged to it.

    Returns:
        The report frame, one row per (model or ensemble, policy).
    """
    df, summary, pr = compute_report(predict_dir, metric, n_boot, seed)
    out = pr.path
    plots = [plot_score_vs_cost(df, summary["metric"], out / "score_vs_cost.png")]
    final, title = _final_probs(pr)
    plots.append(plot_confusion(pr.labels, final, pr.classes, f"{title}, {len(pr.labels)} OOF rows",
                                out / "confusion_matrix.png"))
    wrong = plot_most_wrong(pr, final, out / "most_wrong.png")
    plots += [wrong] if wrong else []
    records = [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]
    write_json(out / "report.json", {**summary, "rows": records})
    with atomic_path(out / "report.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(df, summary, [p.name for p in plots]))
    if wandb_spec is not None:
        _log_wandb(pr.info, wandb_spec, df, summary, plots)
    return df


# --------------------------------------------------------------------------- W&B


def _resume_wandb(info: dict[str, Any], spec: LoggerSpec) -> Any:
    """Resume the predict stage's run; online falls back to offline when the service is unreachable."""
    import wandb

    def init(mode: str, settings: Any = None) -> Any:
        return wandb.init(
            id=str(info["wandb_run_id"]), resume="allow", dir=str(info["wandb_dir"]),
            reinit="finish_previous", project=info.get("wandb_project", spec.project),
            entity=info.get("wandb_entity", spec.entity),
            mode=cast(Any, mode), settings=settings,
        )

    if spec.mode == "online":
        try:
            return init("online", wandb.Settings(init_timeout=spec.init_timeout))
        except Exception as err:  # wandb raises several error types for an unreachable service
            log.warning("W&B online resume failed (%s); logging the report offline.", err)
            return init("offline")
    return init(spec.mode)


def _log_wandb(info: dict[str, Any], spec: LoggerSpec, df: pd.DataFrame, summary: dict[str, Any],
               plots: list[Path]) -> None:
    """Log the table, the plots and the gains to the predict stage's W&B run."""
    if not info.get("wandb_run_id") or not info.get("wandb_dir"):
        log.info("predict.json records no W&B run (wandb_run_id, wandb_dir); not logging to W&B.")
        return
    import wandb

    wb = _resume_wandb(info, spec)
    try:
        wb.log({"report/table": wandb.Table(dataframe=df),
                 **{f"report/{p.stem}": wandb.Image(str(p)) for p in plots}})
        for name in ("ensemble_gain", "tta_gain"):
            wb.summary[name] = summary[name]["diff"] if summary[name] else None
        wb.summary["report/best_row"] = summary["best_row"]
    finally:
        wb.finish()


# --------------------------------------------------------------------------- CLI

import hydra  # noqa: E402  (the CLI layer starts here)
from omegaconf import DictConfig  # noqa: E402

from pipeline.config import CONF_DIR, register  # noqa: E402


def run(cfg: DictConfig) -> pd.DataFrame:
    """Config → :func:`build_report`; prints the table."""
    logger = to_dataclass(LoggerSpec, cfg.logger) if "logger" in cfg else LoggerSpec(mode="offline")
    spec = logger if cfg.wandb and logger.kind == "wandb" else None
    df = build_report(Path(cfg.predict_dir), cfg.metric, int(cfg.n_boot), int(cfg.seed), wandb_spec=spec)
    print(render_table(df))
    print(f"\nReport written: {Path(cfg.predict_dir) / 'report.md'}")
    return df


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """Hydra entry point ``pipeline-report``."""
    # Registered at call time, not import time, so the library above imports without the config stack.
    register()
    _hydra_main()


if __name__ == "__main__":
    main()
