"""Honest choices on OOF rows: a TTA policy per model (``tta=auto``) and a merge method (``ensemble=auto``).

Both choices are cross-fitted, so that picking the best of several candidates on the same rows does not
flatter the pick (Cawley & Talbot 2010):

- **Policies** (:func:`choose_policies`): the OOF rows are split into two stratified halves. On each half
  the best candidate is chosen (ties to the cheaper policy) and scored on the other half. When the halves
  agree, that policy is the model's; when they disagree the gain is within noise and the cheaper of the
  two wins. Candidates costing more than ``max_passes`` forward passes per image are left out.
- **Methods** (:func:`choose_ensemble`): every candidate method is scored out of sample by
  :func:`pipeline.predict.merge.cross_fit_predict`, and so is "the best single model, no TTA" (the model
  chosen on the fitting parts, under policy ``none``). A method is chosen only when it beats that single
  model; otherwise the single model with one view is submitted.

What was chosen and why is returned as plain dicts for ``predict.json`` (keys in docs/uplift.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import Metric, get_metric
from pipeline.predict.merge import Combiner, cross_fit_predict, fit_combiner, stratified_parts
from pipeline.predict.spec import EnsembleSpec
from pipeline.predict.tta import TTAPolicy, create_policy

__all__ = ["METHODS", "candidate_policies", "choose_ensemble", "choose_policies", "flip_harms"]

log = logging.getLogger(__name__)

METHODS: dict[str, tuple[str, str]] = {
    "mean": ("weighted", "equal"),
    "caruana": ("weighted", "caruana"),
    "optimize": ("weighted", "optimize"),
    "stack": ("stack", "equal"),
    "rank": ("rank", "equal"),
}
"""``ensemble.candidates`` names → (``combine``, ``weights``)."""

SINGLE = "single"


def candidate_policies(entries: Sequence[str | Mapping[str, Any]], crop_size: int | None = None) -> list[TTAPolicy]:
    """``tta.candidates`` → policies: each entry a policy name or ``{name: ..., <policy field>: ...}``.

    Raises:
        ConfigError: An empty list, or an entry that is not a valid policy (the message names the entry).
    """
    if not entries:
        raise ConfigError("tta=auto needs tta.candidates: a list of policies such as [{name: none}, {name: hflip}]")
    out = []
    for i, entry in enumerate(entries):
        fields = {"name": entry} if isinstance(entry, str) else dict(entry)
        try:
            out.append(create_policy(**{"crop_size": crop_size, **fields}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"tta.candidates[{i}] = {entry!r}: {err}") from err
    return out


def _better(metric: Metric, a: float, b: float) -> bool:
    return a > b if metric.greater_is_better else a < b


def _best(metric: Metric, scores: Mapping[str, float], order: Sequence[str]) -> str:
    """The best-scoring key; exact ties go to the earlier key in ``order`` (the cheaper one)."""
    best = order[0]
    for key in order[1:]:
        if _better(metric, scores[key], scores[best]):
            best = key
    return best


def _flip_axis(policy: Mapping[str, Any]) -> str | None:
    if policy["name"] in ("hflip", "d4"):
        return "horizontal"
    if policy["name"] == "vflip":
        return "vertical"
    if policy["name"] == "ten_crop" and policy.get("flip", "none") != "none":
        return str(policy["flip"])
    return None


def flip_harms(model: str, scores: Mapping[str, float], policies: Mapping[str, Mapping[str, Any]],
               metric: Metric) -> list[str]:
    """Plain sentences for every flip that lowered the OOF score against the same views without it.

    hflip/vflip are compared with ``none``, ten_crop with ``five_crop``, d4 with ``rot90``.
    """
    base_name = {"hflip": "none", "vflip": "none", "ten_crop": "five_crop", "d4": "rot90"}
    by_name = {p["name"]: k for k, p in policies.items() if k in scores and _flip_axis(p) is None}
    out = []
    for key, policy in policies.items():
        axis, base = _flip_axis(policy), by_name.get(base_name.get(policy["name"], ""))
        if axis is None or base is None or key not in scores:
            continue
        diff = scores[key] - scores[base]
        if _better(metric, scores[base], scores[key]):
            size = f"{abs(diff) * 100:.1f} points" if metric.name != "log_loss" else f"{abs(diff):.4f} in log loss"
            out.append(f"{axis.capitalize()} flips hurt model {model} by −{size} "
                       f"({policy['name']} vs {policies[base]['name']} on its OOF rows, {metric.name}).")
    return out


def choose_policies(oof: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                    policies: Mapping[str, Mapping[str, Any]], metric: str, seed: int = 0,
                    max_passes: int | None = None) -> dict[str, dict[str, Any]]:
    """Each model's TTA policy, chosen on its OOF rows by the cross-fitted halves rule (module docstring).

    Args:
        oof: Model → candidate policy key → (``[N]`` labels, ``[N, K]`` probabilities).
        policies: Candidate key → its settings with ``views`` (forward passes per image), cheapest first
            after sorting by views.
        metric: Registered metric name.
        seed: Seed of the halves.
        max_passes: Leave out candidates with more views than this; None: no budget.

    Returns:
        Model → ``{chosen, scores, half_choices, cross_fitted_score, reason, harms}``.

    Raises:
        ConfigError: No candidate fits in ``max_passes``.
    """
    m = get_metric(metric)
    order = sorted(policies, key=lambda k: int(policies[k]["views"]))  # stable: config order among equals
    allowed = [k for k in order if max_passes is None or int(policies[k]["views"]) <= max_passes]
    if not allowed:
        raise ConfigError(f"tta.max_passes={max_passes}: no candidate policy fits; the cheapest costs "
                          f"{policies[order[0]]['views']} passes per image")
    out = {}
    for model, per_key in oof.items():
        labels = next(iter(per_key.values()))[0]
        half = stratified_parts(labels, 2, seed)
        scores = {k: float(m(labels, per_key[k][1])) for k in allowed}
        picks, held_out = [], []
        for h in (0, 1):
            fit, test = half == h, half != h
            pick = _best(m, {k: float(m(labels[fit], per_key[k][1][fit])) for k in allowed}, allowed)
            picks.append(pick)
            held_out.append(float(m(labels[test], per_key[pick][1][test])))
        if picks[0] == picks[1]:
            chosen, reason = picks[0], "both halves of the OOF rows chose it"
        else:
            chosen = min(picks, key=allowed.index)
            reason = (f"the halves disagreed ({picks[0]} vs {picks[1]}): the gain is within noise, so the cheaper "
                      "policy")
        over = [k for k in order if k not in allowed]
        if over:
            reason += f"; over the budget of {max_passes} passes: {over}"
        harms = flip_harms(model, scores, {k: policies[k] for k in allowed}, m)
        out[model] = {"chosen": chosen, "scores": scores, "half_choices": picks,
                      "cross_fitted_score": float(np.mean(held_out)), "views": int(policies[chosen]["views"]),
                      "reason": reason, "harms": harms}
        log.info("tta=auto: model %s uses %s (%s)", model, chosen, reason)
        for sentence in harms:
            log.info("tta=auto: %s", sentence)
    return out


def _candidate_fit(name: str, spec: EnsembleSpec, metric: str) -> Any:
    combine, weights = METHODS[name]
    return lambda probs, labels: fit_combiner(probs, labels, spec, metric, combine, weights)


def _single_fit(spec: EnsembleSpec, metric: str) -> Any:
    return lambda probs, labels: fit_combiner(probs, labels, spec, metric, SINGLE)


def choose_ensemble(oof: Mapping[str, np.ndarray], labels: np.ndarray, single_oof: Mapping[str, np.ndarray],
                    spec: EnsembleSpec, metric: str) -> tuple[Combiner, dict[str, Any]]:
    """The merge to submit, by cross-fitted score; the best single model without TTA unless a method beats it.

    Args:
        oof: Model → its OOF probabilities under its submission policy (rows aligned with ``labels``).
        labels: ``[N]`` labels.
        single_oof: Model → its OOF probabilities under policy ``none`` (the "single, no TTA" candidate).
        spec: The ensemble settings (``candidates``, ``cross_fit_parts``, ``seed``...).
        metric: The competition metric (scores and direction).

    Returns:
        The combiner fitted on all rows, and ``{chosen, scores, reason, notes}``. A ``single`` combiner is
        fitted on ``single_oof``: the caller predicts that model's test rows with one view.
    """
    m = get_metric(metric)
    models, probs = list(oof), list(oof.values())
    notes = []
    names = [c for c in spec.candidates if len(models) > 1 or c == "mean"]
    if metric == "log_loss" and "rank" in names:
        names.remove("rank")
        notes.append("rank averaging left out: its output is not a probability, so its log loss means nothing")
    crossed = {SINGLE: cross_fit_predict(list(single_oof.values()), labels, _single_fit(spec, metric),
                                         spec.cross_fit_parts, spec.seed)}
    for name in names:
        crossed[name] = cross_fit_predict(probs, labels, _candidate_fit(name, spec, metric), spec.cross_fit_parts,
                                          spec.seed)
    scores = {k: float(m(labels, v)) for k, v in crossed.items()}
    chosen = _best(m, scores, [SINGLE, *names])
    if chosen == SINGLE:
        combiner = fit_combiner(list(single_oof.values()), labels, spec, metric, SINGLE)
        best = list(single_oof)[int(np.argmax(combiner.weights))]
        reason = (f"no method beat the best single model without TTA on the cross-fitted {metric}: "
                  f"{best} alone, one view, is submitted")
    else:
        combine, weights = METHODS[chosen]
        combiner = fit_combiner(probs, labels, spec, metric, combine, weights)
        reason = (f"{chosen} has the best cross-fitted {metric} ({scores[chosen]:.4f}; best single model without "
                  f"TTA {scores[SINGLE]:.4f})")
    log.info("ensemble=auto: %s", reason)
    record = {"chosen": chosen, "scores": scores, "scoring": f"cross-fitted over {spec.cross_fit_parts} parts",
              "reason": reason, "notes": notes, "fit": combiner.info,
              "models": models if chosen != SINGLE else list(single_oof)}
    return combiner, record
