"""The report's words: gains with verdicts, the summary, the paragraph that answers the user, the markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.metrics import BootstrapResult, Metric
from pipeline.report.load import PredictRun
from pipeline.report.members import render_member_table
from pipeline.report.score import kind_of, submitted_name
from pipeline.report.targets import needs_decision

__all__ = [
    "relative_error_reduction", "nested_summary", "in_sample_summary", "summarize", "paragraph", "render_table",
    "markdown",
]

# Shown beside the competition metric in report.md; report.csv holds every registered metric.
_TABLE_METRICS = ("accuracy", "log_loss", "macro_f1")


def _verdict(diff: float, low: float, high: float, greater_is_better: bool) -> str:
    """``helped``, ``hurt`` or ``unclear`` (the interval includes 0, or the diff disagrees with it)."""
    if low <= 0 <= high:
        return "unclear"
    ci_better = low > 0 if greater_is_better else high < 0
    diff_better = diff > 0 if greater_is_better else diff < 0
    if ci_better == diff_better:
        return "helped" if ci_better else "hurt"
    return "unclear"


def relative_error_reduction(diff: float, low: float, high: float, base_score: float,
                             greater_is_better: bool) -> dict[str, float] | None:
    """A difference to the baseline as a share of the baseline's error, with its interval.

    The error is ``1 - score`` for scores (accuracy, F1: at most 1) and the loss itself for losses;
    the interval's ends are divided by the same full-data baseline error. None when that error is 0.

    >>> relative_error_reduction(0.02, 0.01, 0.03, 0.9, True)
    {'rer': 0.2, 'low': 0.1, 'high': 0.3}
    """
    error = 1.0 - base_score if greater_is_better else base_score
    if not error > 0:
        return None
    if greater_is_better:
        return {"rer": round(diff / error, 12), "low": round(low / error, 12), "high": round(high / error, 12)}
    return {"rer": round(-diff / error, 12), "low": round(-high / error, 12), "high": round(-low / error, 12)}


def _gain(row: pd.Series, base: pd.Series, metric: Metric) -> dict[str, Any]:
    """One comparison with the baseline: difference, interval, relative error reduction, verdict and cost."""
    sec, base_sec = row["sec_per_1000_images"], base["sec_per_1000_images"]
    by_time = bool(np.isfinite(sec) and np.isfinite(base_sec) and base_sec > 0)
    ratio = sec / base_sec if by_time else row["forward_passes_per_image"] / base["forward_passes_per_image"]
    diff, low, high = float(row["diff_vs_best_single"]), float(row["ci_low"]), float(row["ci_high"])
    return {
        "row": row["row"], "diff": diff, "ci_low": low, "ci_high": high, "members": int(row["members"]),
        "cost_ratio": float(ratio), "cost_by": "seconds" if by_time else "forward_passes",
        "passes": int(row["forward_passes_per_image"]), "base_passes": int(base["forward_passes_per_image"]),
        "relative_error_reduction": relative_error_reduction(diff, low, high, float(base[metric.name]),
                                                             metric.greater_is_better),
        "verdict": _verdict(diff, low, high, metric.greater_is_better),
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


def nested_summary(df: pd.DataFrame, chosen: int, score: float, boot: BootstrapResult, votes: int, parts: int,
                   metric: Metric) -> dict[str, Any]:
    """The ★ row's entry in the summary: its nested score, and its gain over the baseline from the held-out picks."""
    row = df.loc[chosen].copy()
    row["diff_vs_best_single"], row["ci_low"], row["ci_high"] = boot.diff, boot.low, boot.high
    base = df.loc[df.attrs["baseline_index"]]
    return {**_gain(row, base, metric), "score": float(score), "votes": int(votes), "parts": int(parts),
            "rule": "nested: best on the other parts, scored on the held part"}


def in_sample_summary(df: pd.DataFrame, metric: Metric) -> dict[str, Any]:
    """The naive best row (picked and scored on the same rows), labelled as optimistic."""
    row = df.loc[df["in_sample_best"]].iloc[0]
    return {**_gain(row, df.loc[df.attrs["baseline_index"]], metric), "score": float(row[metric.name]),
            "note": "in-sample, optimistic"}


def summarize(pr: PredictRun, df: pd.DataFrame, metric: Metric, n_boot: int, seed: int) -> dict[str, Any]:
    base_row = df.loc[df.attrs["baseline_index"]]
    # What was submitted: the rule predict.json records (ensemble=auto's choice included), under its policy.
    rule = submitted_name(pr)
    ens_kind = kind_of(rule) if kind_of(rule) != "single" else "ensemble-fitted"
    gib = metric.greater_is_better
    ens = _pick(df, ens_kind, base_row["policy_key"])
    if ens is None and ens_kind != "ensemble-fitted":
        ens = _pick(df, "ensemble-fitted", base_row["policy_key"])
    tta_key = _tta_key(pr, base_row["policy_key"])
    tta = None if tta_key is None else _pick(df, "single", tta_key, base_row["model"])
    hits = df[df["submitted"]] if "submitted" in df else df.iloc[:0]
    final = None if hits.empty else hits.iloc[0]
    spec = pr.info["ensemble"]
    return {
        "metric": metric.name, "greater_is_better": gib, "n_rows": len(pr.labels),
        "n_classes": len(pr.classes), "n_boot": n_boot, "seed": seed, "task": _task_words(pr, metric),
        "baseline": {"row": base_row["row"], "score": float(base_row[metric.name]),
                     "rule": "best single model without TTA (policy 'none', else the fewest views)"},
        "ensemble_gain": None if ens is None else _gain(ens, base_row, metric),
        "tta_gain": None if tta is None else {**_gain(tta, base_row, metric),
                                              "views": int(pr.policies[str(tta_key)]["views"])},
        "final_gain": None if final is None else _gain(final, base_row, metric),
        "best_row": str(df.loc[df["best"], "row"].iloc[0]),
        "fitted_ensemble": {"scoring": "cross-fitted", "parts": int(spec.get("cross_fit_parts", 5)),
                            "seed": int(spec.get("seed", 0)), "caruana_rounds": int(spec.get("caruana_rounds", 50)),
                            "method": pr.method, "fit_metric": _fit_metric(pr, spec, metric)},
        "submitted": {"rule": rule, "row": None if final is None else final["row"],
                      "cross_fitted": pr.info.get("cross_fitted")},
        "leaderboard": pr.info.get("leaderboard"),
        "tta_choice": pr.info.get("tta_choice"), "ensemble_choice": pr.info.get("ensemble_choice"),
    }


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def _sentence(subject: str, what: str, gain: dict[str, Any], metric: str) -> str:
    """``<what> changed <metric> by … at n× the cost: <subject> helped / did not help.``"""
    by_time = gain["cost_by"] == "seconds"
    cost = "the inference cost" if by_time else "the forward passes"
    rer = gain.get("relative_error_reduction")
    rel = (f", a relative error reduction of {_pct(rer['rer'])} (95% CI {_pct(rer['low'])} to {_pct(rer['high'])})"
           if rer else "")
    units = (["seconds per 1,000 images"] if by_time else []) + (
        [f"{gain['passes']} vs {gain['base_passes']} passes per image"] if "passes" in gain else [])
    passes = f" ({'; '.join(units)})" if units else ""
    change = (
        f"{what} changed {metric} by {gain['diff']:+.4f} "
        f"(95% CI {gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}){rel}, at {gain['cost_ratio']:.1f}× {cost}{passes}"
    )
    if gain["verdict"] == "helped":
        return f"{change}: {subject} helped."
    if gain["verdict"] == "hurt":
        return f"{change}: {subject} did not help, it made {metric} worse."
    return f"{change}: {subject} did not help measurably (the 95% interval includes 0)."


def _nested_sentence(summary: dict[str, Any]) -> str:
    n, naive, m = summary["nested_best"], summary["in_sample_best"], summary["metric"]
    held = f"{n['parts'] - 1}/{n['parts']}"
    text = (f"Chosen by a nested rule (for each of {n['parts']} parts of the OOF rows, the best row on the other "
            f"{held} is scored on that part), the best row is {n['row']} (picked in {n['votes']} of {n['parts']} "
            f"parts). On rows it never saw, that choice scores {m} {n['score']:.4f}: "
            + _sentence("choosing the best row", "it", n, m))
    if naive["row"] != n["row"]:
        text += (f" The in-sample best row, {naive['row']} ({naive['diff']:+.4f}), is in-sample, optimistic: "
                 "it was picked and scored on the same rows.")
    return text


def _savings_sentences(summary: dict[str, Any]) -> list[str]:
    """Members and policies that could be dropped for free, and flips that hurt."""
    out, savings = [], summary.get("savings") or {}
    drop = savings.get("droppable")
    if drop:
        free = [d["model"] + (" (weight 0 already)" if d["unused"] else "") for d in drop["models"] if d["free"]]
        out.append(f"Free to drop from {drop['row']}: {', '.join(free)} (leaving any one of them out does "
                   f"not lower {summary['metric']} beyond noise)." if free else
                   f"No member of {drop['row']} can be dropped without lowering {summary['metric']} beyond noise.")
        out += [drop["recipes"]] if drop.get("recipes") else []
    groups: dict[tuple[str, str], list[str]] = {}
    for r in savings.get("redundant_policies", []):
        groups.setdefault((r["policy"], r["cheaper"]), []).append(r["model"])
    if groups:
        out.append("No better than a cheaper policy (within noise): " + "; ".join(
            f"{p} vs {c} for {', '.join(ms)}" for (p, c), ms in groups.items()) + ".")
    out += [f["sentence"] for f in savings.get("flips", []) if f["worse"]]
    return out


def _choice_sentences(summary: dict[str, Any]) -> list[str]:
    """What pipeline-predict chose automatically (``tta_choice``, ``ensemble_choice``), when it recorded it."""
    out = []
    tta = summary.get("tta_choice")
    if tta:
        out.append("tta=auto chose, per model: " + ", ".join(
            f"{m} → {c.get('chosen')}" for m, c in tta.items() if isinstance(c, dict)) + ".")
    ens = summary.get("ensemble_choice")
    if isinstance(ens, dict) and ens.get("chosen"):
        reason = f" ({ens['reason']})" if ens.get("reason") else ""
        out.append(f"ensemble=auto chose {ens['chosen']}{reason}.")
    return out


def paragraph(summary: dict[str, Any]) -> str:
    """The plain-words verdict on ensembling and TTA, generated from the numbers."""
    m, base, ens, tta = summary["metric"], summary["baseline"], summary["ensemble_gain"], summary["tta_gain"]
    direction = "higher" if summary["greater_is_better"] else "lower"
    parts = [f"Baseline: the best single model without TTA, {base['row']} ({m} {base['score']:.4f}; "
             f"{direction} is better)."]
    if ens:
        plural = "s" if ens["members"] != 1 else ""
        parts.append(_sentence("ensembling", f"Ensembling ({ens['row']}, {ens['members']} member{plural})", ens, m))
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
    if summary.get("nested_best"):
        parts.append(_nested_sentence(summary))
    parts += _savings_sentences(summary) + _choice_sentences(summary)
    return " ".join(parts)


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
        naive = "best (in-sample, optimistic)" if r.get("in_sample_best", False) and not r["best"] else ""
        row = f"**{r['row']}** (submitted)" if r.get("submitted", False) else r["row"]
        cells = ["★" if r["best"] else naive, row, r["kind"], _fmt(r[metric], ".4f"), diff,
                 str(r["forward_passes_per_image"]), _fmt(r["sec_per_1000_images"], ".3g"),
                 *(_fmt(r[m], ".4f") for m in others)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(df: pd.DataFrame, summary: dict[str, Any], plots: list[str]) -> str:
    m, fit = summary["metric"], summary["fitted_ensemble"]
    lb = summary["leaderboard"]
    lb_line = (f"**Leaderboard:** {lb['metric']} = {lb['score']:.4f} on {lb['rows']} test images "
               "(leaderboard score on the hidden solution file, not validation)." if lb else
               "**Leaderboard:** none recorded in predict.json.")
    lines = [
        "# Ensemble and TTA report", "",
        f"**Metric:** {m} ({'higher' if summary['greater_is_better'] else 'lower'} is better), on "
        f"{summary['n_rows']} out-of-fold rows, {summary.get('task') or str(summary['n_classes']) + ' classes'}. "
        "Why this metric: "
        f"{summary.get('metric_reason', 'as recorded in predict.json')}.", "",
        *(f"**Warning:** {w}\n" for w in summary.get("warnings", [])),
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
        "★ the best row, chosen by the nested rule (the row picked most often when each part of the OOF rows is "
        "held out and the best row is picked on the others); its nested score and interval are in the paragraph "
        "above. A row marked \"best (in-sample, optimistic)\" scored best on all rows, but was picked and scored "
        "on the same rows. passes/img = TTA views × fold members, summed over the ensemble's models; "
        "s/1000 img = seconds of model compute per 1,000 images, measured by pipeline-predict on the OOF rows "
        "(on the test set where a policy has no OOF timing; – where none was measured), summed over models.", "",
    ]
    lines += render_member_table((summary.get("savings") or {}).get("droppable") or {})
    lines += _per_model_section(summary)
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _per_model_section(summary: dict[str, Any]) -> list[str]:
    """TTA per model: the policy pipeline-predict chose (when recorded) and every flip's effect."""
    savings = summary.get("savings") or {}
    flips, chosen = savings.get("flips", []), summary.get("tta_choice") or {}
    if not flips and not chosen:
        return []
    lines = ["## TTA per model", ""]
    for model, c in chosen.items():
        if isinstance(c, dict):
            reason = f": {c['reason']}" if c.get("reason") else ""
            lines.append(f"- `{model}`: tta=auto chose **{c.get('chosen')}**{reason}")
    lines += [f"- {f['sentence']}" for f in flips]
    return [*lines, ""]


def _task_words(pr: PredictRun, metric: Metric) -> str | None:
    """The task in words for a task other than one class per image (None: the classes are counted instead)."""
    task = pr.task
    if task is None:
        return None
    what = {"binary": f"binary ({' vs '.join(task.columns)})", "multilabel": f"multi-label ({len(task.columns)} labels)",
            "regression": f"regression of {task.columns[0]}", "ordinal": f"ordinal grades {task.low}-{task.high}"}
    decided = {"multilabel": "per-label thresholds", "ordinal": "cut points"}.get(task.kind)
    how = (f"; each row scored on {decided} fitted cross-fitted on the same parts as the ensemble"
           if decided and needs_decision(task, metric) else "")
    return what[task.kind] + how


def _fit_metric(pr: PredictRun, spec: dict[str, Any], metric: Metric) -> str:
    """What Caruana weights were fitted for: the task's smooth loss stands in for log loss beyond class probabilities."""
    name = spec.get("fit_metric") or metric.name
    task = pr.task
    return task.smooth_loss if task is not None and not task.softmax and name == "log_loss" else str(name)
