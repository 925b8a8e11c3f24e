"""Honest choices on OOF rows: a TTA policy per model (``tta=auto``) and a merge method (``ensemble=auto``).

Picking the best of several candidates on the same rows flatters the pick (Cawley & Talbot 2010), and
on a few hundred OOF rows a complex method can "win" by three lucky rows. Both choices therefore start
from the simplest candidate, the best single model without TTA, and move away from it only for a
candidate that beats it by more than selection noise (:func:`pipeline.predict.fitting.beats`: the lower
end of a one-sided paired-bootstrap interval of the gain is above zero, tested on a smooth score, log
loss, which separates candidates on far fewer rows than accuracy does) and is better on the competition
metric too. Among the candidates that pass, the best score wins: cost never outweighs a
measured gain; it breaks exact ties only, or enters as a budget (``tta.max_passes``).

- **Policies** (:func:`choose_policies`): each model's candidates are scored on its OOF rows (no fit,
  so no cross-fitting is needed) against its ``none`` policy.
- **Methods** (:func:`choose_ensemble`): every candidate method, and the best single model with and
  without its chosen TTA, is scored out of sample by :func:`pipeline.predict.fitting.cross_fit` on the
  one seeded split; the margin test compares those cross-fitted predictions row by row.

What was chosen and why is returned as plain dicts for ``predict.json`` (keys in docs/uplift.md), with
readable policy names (hashes stay in file names).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import Metric, get_metric
from pipeline.core.task import Task
from pipeline.member.predictions import frame_labels, frame_outputs
from pipeline.predict.ensemble import SOFTMAX_ONLY
from pipeline.predict.fitting import Margin, beats, cross_fit, rule, split_strata
from pipeline.predict.merge import Combiner
from pipeline.predict.plan import policy_names
from pipeline.predict.spec import EnsembleSpec
from pipeline.predict.tta import TTAPolicy, create_policy, views_per_image

__all__ = ["METHODS_RULE", "SINGLE", "SINGLE_TTA", "SMOOTH", "candidate_policies", "choose_ensemble", "choose_policies",
           "choose_tta", "flip_harms", "margin_of", "margin_text", "passes_margin", "pick_best"]

log = logging.getLogger(__name__)

SINGLE = "single"
SINGLE_TTA = "single+tta"
"""The best single model under its ``tta=auto`` policy (a candidate of ``ensemble=auto`` when some policy is not none)."""

SMOOTH = "log_loss"
"""The score the margin test runs on: smooth, so it separates candidates on fewer rows than a step metric."""


def margin_of(level: float | None, seed: int, score: str = SMOOTH) -> Margin:
    """The :class:`~pipeline.predict.fitting.Margin` of a ``margin`` setting (None: the best score wins)."""
    return Margin(level=None if level is None else float(level), score=score, seed=seed)


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


def _passes(labels: np.ndarray, cand: np.ndarray, base: np.ndarray, m: Metric, margin: Margin,
            smooth_name: str = SMOOTH) -> tuple[bool, dict[str, Any]]:
    """The margin test of one candidate against the baseline, and its record.

    With a margin, the candidate passes when its smooth score (log loss) beats the baseline's beyond noise
    and its competition-metric score is better too: a gain in calibration alone (log loss) is not worth
    more models or views when the metric is, say, accuracy, and a loss on the metric is never traded for
    log loss. Without a margin (``margin: null``), when its metric score is strictly better.
    """
    diff = float(m(labels, cand) - m(labels, base))
    better = diff > 0 if m.greater_is_better else diff < 0
    if margin.level is None:
        return better, {"diff": diff, "beats_baseline": better}
    on = get_metric(smooth_name) if margin.score == SMOOTH else m  # the task's smooth loss: log loss, BCE, MSE
    won, boot = beats(labels, cand, base, on, margin)
    ok = bool(won and better)  # a tie on the metric is no reason to pay for more models or views
    record: dict[str, Any] = {"diff": diff, "beats_baseline": ok}
    if boot is not None:
        sign = 1.0 if on.greater_is_better else -1.0  # gains: positive is better
        low, high = sorted((sign * boot.low, sign * boot.high))
        record[f"{on.name}_gain"] = {"diff": sign * boot.diff, "low": low, "high": high,
                                                 "level": f"one-sided {1 - margin.level:.0%}"}
    return ok, record


def _pick(m: Metric, scores: Mapping[str, float], smooth: Mapping[str, float], passing: Sequence[str]) -> str:
    """Among the passing keys (simplest first), the best metric score; ties: the lower log loss, then the first."""
    sign = 1.0 if m.greater_is_better else -1.0
    return min(passing, key=lambda k: (-sign * scores[k], smooth[k], passing.index(k)))


def choose_policies(oof: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                    policies: Mapping[str, Mapping[str, Any]], metric: str, margin: Margin | None = None,
                    max_passes: int | None = None, task: Task | None = None) -> dict[str, dict[str, Any]]:
    """Each model's TTA policy: the best on its OOF rows among those that beat ``none`` beyond noise.

    Args:
        oof: Model → candidate policy key → (``[N]`` labels, ``[N, K]`` probabilities).
        policies: Candidate key → its settings with ``views`` (forward passes per image).
        metric: Registered metric name.
        margin: The margin a policy must win by over the baseline (default: one-sided 95%).
        max_passes: Leave out candidates with more views than this; None: no budget.
        task: What the outputs are; its smooth loss (log loss, mean per-label BCE, MSE) is the margin's score.

    Returns:
        Model → ``{chosen, key, baseline, scores, gains, views, reason, harms}`` with readable policy
        names (``key``: the file key of the chosen policy).

    Raises:
        ConfigError: No candidate fits in ``max_passes``.
    """
    m, margin = get_metric(metric), margin or Margin()
    smooth_name = task.smooth_loss if task is not None else SMOOTH
    names = policy_names(policies)
    order = sorted(policies, key=lambda k: int(policies[k]["views"]))  # stable: config order among equals
    allowed = [k for k in order if max_passes is None or int(policies[k]["views"]) <= max_passes]
    if not allowed:
        raise ConfigError(f"tta.max_passes={max_passes}: no candidate policy fits; the cheapest costs "
                          f"{policies[order[0]]['views']} passes per image")
    base = next((k for k in allowed if policies[k]["name"] == "none"), allowed[0])
    out = {}
    for model, per_key in oof.items():
        labels = next(iter(per_key.values()))[0]
        scores = {k: float(m(labels, per_key[k][1])) for k in allowed}
        smooth = {k: float(get_metric(smooth_name)(labels, per_key[k][1])) for k in allowed}
        gains, passing = {}, [base]
        for k in allowed:
            if k != base:
                ok, gains[names[k]] = _passes(labels, per_key[k][1], per_key[base][1], m, margin, smooth_name)
                passing += [k] if ok else []
        chosen = _pick(m, scores, smooth, passing)
        if chosen == base:
            reason = f"no policy beat {names[base]} beyond noise ({_level(margin, smooth_name)}), so the cheapest"
        else:
            beaten = len(passing) - 1
            reason = (f"best {m.name} of the {beaten} polic{'y' if beaten == 1 else 'ies'} that beat {names[base]} "
                      f"beyond noise ({_level(margin, smooth_name)})")
        over = [names[k] for k in order if k not in allowed]
        if over:
            reason += f"; over the budget of {max_passes} passes: {over}"
        harms = flip_harms(model, {names[k]: v for k, v in scores.items()},
                           {names[k]: policies[k] for k in allowed}, m)
        out[model] = {"chosen": names[chosen], "key": chosen, "baseline": names[base],
                      "scores": {names[k]: v for k, v in scores.items()}, "gains": gains,
                      "views": int(policies[chosen]["views"]), "reason": reason, "harms": harms}
        log.info("tta=auto: model %s uses %s (%s)", model, names[chosen], reason)
        for sentence in harms:
            log.info("tta=auto: %s", sentence)
    return out


def _level(margin: Margin, smooth: str = SMOOTH) -> str:
    if margin.level is None:
        return "no margin: the best score wins"
    if margin.score != SMOOTH:
        return f"paired bootstrap of the metric's gain, one-sided {1 - margin.level:.0%}"
    return f"paired bootstrap of the {smooth} gain, one-sided {1 - margin.level:.0%}, and a better metric"


def _data_notes(models: Sequence[str], probs: Sequence[np.ndarray], labels: np.ndarray, parts: int) -> list[str]:
    """Why nothing can be merged honestly: one model, identical models, too few OOF rows to cross-fit."""
    notes = []
    if len(models) < 2:
        notes.append("one model: nothing to merge")
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            if np.array_equal(probs[i], probs[j]):
                notes.append(f"models {models[i]} and {models[j]} are identical (same OOF predictions): "
                             "merging them adds nothing")
    classes = np.asarray(labels).ndim == 1 and np.asarray(labels).dtype.kind in "iub"  # not tags, not values
    smallest = int(np.bincount(np.unique(split_strata(labels), return_inverse=True)[1]).min()) if len(labels) else 0
    if len(labels) < 2 * parts or (classes and smallest < 2):
        where = f" (smallest class {smallest})" if classes else ""
        notes.append(f"{len(labels)} OOF rows{where}: too few to cross-fit a merge over {parts} parts, so no method "
                     "is compared")
    return notes


def choose_ensemble(oof: Mapping[str, np.ndarray], labels: np.ndarray, single_oof: Mapping[str, np.ndarray],
                    spec: EnsembleSpec, metric: str, margin: Margin | None = None, task: Task | None = None,
                    ) -> tuple[Combiner, dict[str, Any]]:
    """The merge to submit: the best cross-fitted candidate among those that beat the best single model.

    Args:
        oof: Model → its OOF probabilities under its submission policy (rows aligned with ``labels``).
        labels: ``[N]`` labels.
        single_oof: Model → its OOF probabilities under policy ``none`` (the "single, no TTA" baseline).
        spec: The ensemble settings (``candidates``, ``cross_fit_parts``, ``seed``...).
        metric: The competition metric (scores and direction).
        margin: The margin a candidate must win by over the baseline (default: one-sided 95%).
        task: What the outputs are (None: class probabilities); the margin tests its smooth loss, and merges
            the task can't take (:data:`pipeline.predict.ensemble.SOFTMAX_ONLY`) are left out with a note.

    Returns:
        The combiner fitted on all rows, and ``{chosen, scores, gains, reason, notes, fit, models}``. A
        ``single`` combiner is fitted on ``single_oof`` and ``single+tta`` on ``oof``: the caller predicts
        that model's test rows alone (``models`` names it).
    """
    m, margin = get_metric(metric), margin or Margin(seed=spec.seed)
    models, probs = list(oof), [np.asarray(p, np.float32) for p in oof.values()]
    singles = [np.asarray(p, np.float32) for p in single_oof.values()]
    notes = _data_notes(models, probs, labels, spec.cross_fit_parts)
    too_few = any(n.endswith("so no method is compared") for n in notes)
    names = [] if too_few else [c for c in spec.candidates if len(models) > 1]
    if metric == SMOOTH and "rank" in names:
        names.remove("rank")
        notes.append("rank averaging left out: its output is not a probability, so its log loss means nothing")
    smooth_name = task.smooth_loss if task is not None else SMOOTH
    if task is not None and not task.softmax and (left := [n for n in names if n in SOFTMAX_ONLY]):
        names = [n for n in names if n not in SOFTMAX_ONLY]
        notes.append(f"{', '.join(left)} left out: made for class probabilities, and this is a {task.kind} task")
    with_tta = not too_few and any(not np.array_equal(a, b) for a, b in zip(probs, singles))
    crossed: dict[str, np.ndarray] = {}
    if not too_few:
        single = rule(SINGLE, spec, metric, task)
        crossed[SINGLE] = cross_fit(single, singles, labels, spec.cross_fit_parts, spec.seed)
        if with_tta:
            crossed[SINGLE_TTA] = cross_fit(single, probs, labels, spec.cross_fit_parts, spec.seed)
        for name in names:
            crossed[name] = cross_fit(rule(METHODS_RULE[name], spec, metric, task), probs, labels,
                                      spec.cross_fit_parts, spec.seed)
    scores = {k: float(m(labels, v)) for k, v in crossed.items()}
    smooth = {k: float(get_metric(smooth_name)(labels, v)) for k, v in crossed.items()}
    gains, passing = {}, [SINGLE]
    for k in crossed:
        if k != SINGLE:
            ok, gains[k] = _passes(labels, crossed[k], crossed[SINGLE], m, margin, smooth_name)
            passing += [k] if ok else []
    chosen = _pick(m, scores, smooth, passing) if crossed else SINGLE
    fit_on = singles if chosen == SINGLE else probs
    combiner = rule(METHODS_RULE.get(chosen, SINGLE), spec, metric, task).fit(fit_on, labels)
    if chosen in (SINGLE, SINGLE_TTA):
        best = models[int(np.argmax(combiner.weights))]
        what = "without TTA, one view" if chosen == SINGLE else "under its tta=auto policy"
        why = "; ".join(notes) if notes else f"no method beat it beyond noise ({_level(margin, smooth_name)})"
        reason = f"the best single model {best}, {what}, is submitted: {why}"
        if chosen == SINGLE_TTA:
            reason = (f"the best single model {best} under its tta=auto policy beat it without TTA beyond noise, "
                      "and no merge beat that")
    else:
        reason = (f"{chosen} has the best cross-fitted {metric} ({scores[chosen]:.4f}) of the candidates that beat "
                  f"the best single model without TTA ({scores[SINGLE]:.4f}) beyond noise ({_level(margin, smooth_name)})")
    log.info("ensemble=auto: %s", reason)
    record = {"chosen": chosen, "scores": scores, "gains": gains,
              "scoring": f"cross-fitted over {spec.cross_fit_parts} parts (seed {spec.seed})",
              "margin": _level(margin, smooth_name), "reason": reason, "notes": notes, "fit": combiner.info,
              "models": [best] if chosen in (SINGLE, SINGLE_TTA) else models}
    return combiner, record


METHODS_RULE = {"mean": "mean", "caruana": "caruana", "optimize": "optimize", "stack": "stack", "rank": "rank",
                "bagged": "bagged", "temperature": "temperature", SINGLE: SINGLE, SINGLE_TTA: SINGLE}
"""``ensemble.candidates`` (and the single-model candidates) → :data:`pipeline.predict.fitting.RULES` names."""

passes_margin = _passes
"""The margin test of one candidate against the baseline (also the time budget's, :mod:`pipeline.predict.budget`)."""
pick_best = _pick
"""Among the passing candidates (simplest first), the best metric score; ties: the lower log loss, then the first."""
margin_text = _level
"""A margin in words, for reasons."""

def choose_tta(frames: Mapping[str, Mapping[str, pd.DataFrame]], templates: Mapping[str, TTAPolicy], keys: list[str],
               models: list[str], metric: str, margin: Margin, max_passes: int | None,
               task: Task | None = None) -> dict[str, dict[str, Any]]:
    """``tta=auto`` from the predict stage's OOF frames (policy → model → frame): each model's policy among the
    candidate ``keys`` that have OOF rows (:func:`choose_policies`)."""
    if not keys:
        raise ConfigError("tta=auto needs out-of-fold predictions under its candidates; none has them (mode=submit "
                          "without cached OOF predictions). Use mode=full with the training data, or a fixed tta=...")
    views = {k: {**asdict(templates[k]), "views": views_per_image(templates[k])} for k in keys}
    oof = {g: {k: (frame_labels(frames[k][g]), frame_outputs(frames[k][g], np.float64)) for k in keys} for g in models}
    return choose_policies(oof, views, metric, margin, max_passes, task)
