"""What could be dropped for free, and what a flip did: paired comparisons the report makes on its own OOF rows.

- **Flip effects**: each policy that adds mirrored views to a flip-free policy predicted beside it
  (``hflip``/``vflip`` → ``none``, ``ten_crop`` → ``five_crop``, ``d4`` → ``rot90``), per model. Flips do
  not preserve every label (digits, text); the report says so when the OOF score fell.
- **Redundant policies**: a policy that is not better, beyond noise, than one with fewer views, per model.
- **Droppable members**: a model whose removal does not lower the submitted merge's score beyond noise
  (the same rule re-fitted, cross-fitted, without it, for fitted rules), for every task: a metric scored on
  thresholds or cut points scores the merge without it on its own cross-fitted decisions, as the report's rows.

"Beyond noise" means the 95% paired bootstrap interval of the difference excludes 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.metrics import Metric, paired_bootstrap
from pipeline.core.reduce import merge_members
from pipeline.predict.fitting import cross_fit
from pipeline.report.load import PredictRun
from pipeline.report.score import Row, ensemble_spec, pr_rule
from pipeline.report.targets import decided, needs_decision

__all__ = ["FLIP_OF", "flip_effects", "redundant_policies", "droppable_models", "points"]

FLIP_OF = {"hflip": "none", "vflip": "none", "ten_crop": "five_crop", "d4": "rot90"}
"""Policy with mirrored views → the same views without the mirror."""


def points(diff: float, metric: Metric) -> str:
    """A difference in words: points (×100) for scores in [0, 1], the raw change for losses."""
    return f"{100 * diff:+.1f} points" if metric.greater_is_better else f"{diff:+.4f} {metric.name}"


def _axis(policy: dict[str, Any]) -> str:
    if policy["name"] == "vflip":
        return "vertical"
    if policy["name"] == "d4":
        return "mirror"
    return str(policy.get("flip", "horizontal"))


def _counterpart(pr: PredictRun, key: str) -> str | None:
    policy = pr.policies[key]
    plain = FLIP_OF.get(policy["name"])
    if plain is None or _axis(policy) == "none":
        return None
    same = [k for k, p in pr.policies.items() if p["name"] == plain and p.get("crop_size") == policy.get("crop_size")]
    return same[0] if same else None


def _compare(pr: PredictRun, a: np.ndarray, b: np.ndarray, metric: Metric, n_boot: int, seed: int) -> dict[str, Any]:
    boot = paired_bootstrap(pr.labels, a, b, metric, n_boot=n_boot, seed=seed,
                            task=None if pr.task is None else pr.task.kind)
    up, down = boot.low > 0, boot.high < 0  # the interval excludes 0 above / below
    gib = metric.greater_is_better
    return {"diff": boot.diff, "ci_low": boot.low, "ci_high": boot.high,
            "better": up if gib else down, "worse": down if gib else up}


def flip_effects(pr: PredictRun, metric: Metric, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per model, each flip policy against its flip-free counterpart, with a sentence."""
    out = []
    for key in pr.policies:
        plain = _counterpart(pr, key)
        if plain is None:
            continue
        axis, name, plain_name = _axis(pr.policies[key]), pr.policy_names[key], pr.policy_names[plain]
        for model in pr.models:
            c = _compare(pr, pr.oof[(model, key)], pr.oof[(model, plain)], metric, n_boot, seed)
            what = f"{axis} flips" if axis != "mirror" else "mirrored views"
            detail = (f"({name} vs {plain_name}, 95% CI {points(c['ci_low'], metric)} to "
                      f"{points(c['ci_high'], metric)})")
            if c["worse"]:
                sentence = f"{what} hurt {model} by {points(c['diff'], metric)} {detail}."
            elif c["better"]:
                sentence = f"{what} helped {model} by {points(c['diff'], metric)} {detail}."
            else:
                sentence = f"{what} changed {model} by {points(c['diff'], metric)}, within noise {detail}."
            out.append({"model": model, "policy": name, "without": plain_name, "axis": axis, **c,
                        "sentence": sentence[0].upper() + sentence[1:]})
    return out


def redundant_policies(pr: PredictRun, metric: Metric, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per model, each policy that is no better (beyond noise) than a policy with fewer views: the cheapest such one."""
    views = {k: int(p["views"]) for k, p in pr.policies.items()}
    out = []
    for model in pr.models:
        for key in pr.policies:
            for cheaper in sorted((k for k in pr.policies if views[k] < views[key]), key=views.__getitem__):
                c = _compare(pr, pr.oof[(model, key)], pr.oof[(model, cheaper)], metric, n_boot, seed)
                if not c["better"]:
                    out.append({"model": model, "policy": pr.policy_names[key], "views": views[key],
                                "cheaper": pr.policy_names[cheaper], "cheaper_views": views[cheaper], **c})
                    break
    return out


def _metric(pr: PredictRun) -> Metric:
    from pipeline.core.metrics import get_metric

    return get_metric(str(pr.info["metric"]))


def _without(pr: PredictRun, row: Row, drop: str, metric: Metric) -> np.ndarray:
    """The ensemble ``row`` with model ``drop`` removed, built the way ``row`` was: the same merge (fitted rules
    re-fitted, cross-fitted) and, for a metric scored on thresholds or cut points, decided the same way."""
    keep = [m for m in pr.models if m != drop]
    probs = [pr.oof[(m, pr.model_key(m, row.key))] for m in keep]
    spec = ensemble_spec(pr)
    if len(keep) == 1:
        out = probs[0]
    elif row.rule and row.rule not in ("mean", "given", "single"):
        r = pr_rule(pr, row.rule, spec, _metric(pr))
        if r.scored_cross_fitted:
            out = cross_fit(r, probs, pr.labels, min(r.spec.cross_fit_parts, len(pr.labels)), r.spec.seed)
        else:
            out = r.fit(probs, pr.labels).apply(probs)
    else:
        weights = [row.weights[m] for m in keep] if row.kind == "ensemble-given" else None
        if weights is not None and sum(weights) <= 0:
            weights = None
        softmax = pr.task is None or pr.task.softmax  # other tasks: weighted means, not renormalised
        out = merge_members(probs, weights=weights, method=pr.method, normalize=softmax).numpy()
    if pr.task is not None and needs_decision(pr.task, metric):
        out = decided(pr.task, pr.labels, out, metric, min(spec.cross_fit_parts, len(pr.labels)), spec.seed)
    return out


def droppable_models(pr: PredictRun, row: Row, metric: Metric, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Each model of ensemble ``row``: the score change when it is left out, and whether that is free.

    A model is free to drop when leaving it out does not lower the score beyond noise, or when the
    deployed weights already give it 0 (then it costs nothing either way).
    """
    out = []
    for model in pr.models:
        if row.weights.get(model, 0.0) <= 0:
            out.append({"model": model, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "free": True, "unused": True})
            continue
        c = _compare(pr, _without(pr, row, model, metric), row.probs, metric, n_boot, seed)
        out.append({"model": model, **{k: c[k] for k in ("diff", "ci_low", "ci_high")}, "free": not c["worse"],
                    "unused": False})
    return out
