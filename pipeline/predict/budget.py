"""Inference within a time budget: the members × TTA policies with the best cross-fitted score whose cost fits.

Code competitions cap inference time. With ``budget.seconds`` (the whole test set, on the device at hand)
or ``budget.per_1000`` (seconds per 1,000 test images) the predict stage keeps the configured submission
(its models of non-zero weight under their policies, ``tta=auto``'s choice included) when its cost fits.
Otherwise it chooses among every *plan* (a subset of the models, each under one policy with OOF rows)
that fits, by the score-first rule of ``ensemble=auto`` (:mod:`pipeline.predict.choose`):

- every plan is scored out of sample: the submitted rule cross-fitted on the one split
  (:func:`pipeline.predict.fitting.cross_fit`; ``ensemble=auto`` scores plans with ``mean`` and then
  chooses the merge among the kept models);
- the simplest plan that fits (the best single model without TTA, else the cheapest plan) is the baseline;
  a plan replaces it only when it beats it beyond noise (:func:`pipeline.predict.choose.passes_margin`,
  ``ensemble.margin``); among those the best score wins. Cost is the constraint, never traded for score.

Costs are model compute seconds (the runner's timing sidecars, summed over a model's fold members) per
1,000 images, scaled to the test set: the OOF timings predict records (:func:`timings`), or, for a timing
that is missing or was measured on another device, a quick timing on a few test images on this device
(:func:`probe_timings`); without one the cost stays an estimate, and the record says so and from what.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.core.metrics import get_metric
from pipeline.member.folder import Member
from pipeline.member.predictions import frame_labels, frame_outputs
from pipeline.predict.choose import SMOOTH, margin_of, margin_text, passes_margin, pick_best
from pipeline.predict.fitting import Margin, Rule, cross_fit, rule, submitted_rule
from pipeline.predict.merge import Combiner
from pipeline.predict.spec import BudgetSpec, EnsembleSpec, PredictOptions
from pipeline.predict.tta import TTAPolicy, views_per_image

__all__ = ["within_frames",
           "MAX_PLANS", "Plan", "choose_plan", "plan_probs", "plan_spec", "plan_text", "price", "probe_timings", "costs_of",
           "timings", "too_small", "within"]

Plan = dict[str, str]
"""Model → the policy key it is predicted under (models left out are absent)."""

MAX_PLANS = 2000
"""Most plans scored; beyond it each model keeps only its best-scoring policies (the record says so)."""


def _sidecar(path: Path | None) -> dict[str, Any] | None:
    """A prediction file's timing sidecar (``val_predictions.csv`` from training has none)."""
    side = None if path is None else path.with_suffix(".json")
    return read_json(side) if side is not None and side.is_file() else None


def timings(models: Mapping[str, Sequence[Member]], templates: Mapping[str, TTAPolicy],
            oof: Mapping[str, Mapping[str, Path]], test: Mapping[tuple[str, str], Path]) -> dict[str, dict[str, Any]]:
    """Seconds per 1,000 images per model and policy, the device they were measured on, forward passes per image.

    Seconds are measured on the OOF rows, where every policy runs; a policy without OOF timings (inference-
    only mode) uses the test run's, and one with neither has ``None`` (the report then compares passes).
    """
    out: dict[str, dict[str, Any]] = {}
    for g, ms in models.items():
        for key, policy in templates.items():
            measured, where, device = None, None, None
            for source, files in (("oof", {m.name: oof.get(key, {}).get(m.name) for m in ms}),
                                  ("test", {m.name: test.get((m.name, key)) for m in ms})):
                sides = [_sidecar(files[m.name]) for m in ms]
                if all(sides):
                    measured, where = sum(float(s["seconds_per_1000"]) for s in sides if s), source
                    device = ",".join(sorted({str(s.get("device")) for s in sides if s}))
                    break
            out.setdefault(g, {})[key] = {"seconds_per_1000": measured, "measured_on": where, "device": device,
                                          "forward_passes_per_image": len(ms) * views_per_image(policy)}
    return out


def _kind(device: str | None) -> str | None:
    return None if device in (None, "None") else str(device).split(":")[0]


def costs_of(timing: Mapping[str, Mapping[str, Mapping[str, Any]]], n_test: int, device: str,
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]], list[tuple[str, str]]]:
    """Seconds for the whole test set per model and policy, where each came from, and those not measured here.

    A timing measured on another device kind (``cuda`` vs ``cpu``) is kept as an estimate; one that is
    missing costs nothing known (``inf``) until :func:`probe_timings` measures it.
    """
    seconds: dict[str, dict[str, float]] = {}
    source: dict[str, dict[str, str]] = {}
    stale = []
    for g, per in timing.items():
        for key, t in per.items():
            spk, dev = t.get("seconds_per_1000"), t.get("device")
            rows = "OOF" if t.get("measured_on") == "oof" else "test"
            if spk is None:
                seconds.setdefault(g, {})[key] = math.inf
                source.setdefault(g, {})[key] = "no timing recorded"
                stale.append((g, key))
                continue
            seconds.setdefault(g, {})[key] = float(spk) * n_test / 1000.0
            if _kind(dev) == _kind(device):
                source.setdefault(g, {})[key] = f"measured on {dev} ({rows} rows)"
            else:
                where = "an unrecorded device" if _kind(dev) is None else dev
                source.setdefault(g, {})[key] = f"estimated from {rows} timings measured on {where}, not {device}"
                stale.append((g, key))
    return seconds, source, stale


Runner = Callable[..., dict[tuple[str, str], Path]]


def probe_timings(models: Mapping[str, Sequence[Member]], table: Any, wanted: Sequence[tuple[str, str]],
                  templates: Mapping[str, TTAPolicy], opts: PredictOptions, n_images: int, run: Runner,
                  ) -> dict[tuple[str, str], float]:
    """A quick timing on this device: seconds per 1,000 images of each wanted (model, policy), on ``n_images``
    test images predicted into a temporary cache (nothing is written beside the members)."""
    sub = table.subset(np.arange(min(n_images, len(table))))
    out = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-probe-") as tmp:
        probe_opts = replace(opts, prediction_cache_dir=tmp)
        for key in dict.fromkeys(k for _, k in wanted):
            todo = [m for g, k in wanted if k == key for m in models[g]]
            files = run(todo, sub, f"probe{len(sub)}", {key: templates[key]}, probe_opts)
            for g, k in wanted:
                if k == key:
                    out[(g, k)] = sum(float((_sidecar(files[(m.name, k)]) or {})["seconds_per_1000"]) for m in models[g])
    return out


def plan_text(plan: Plan, names: Mapping[str, str]) -> str:
    """``model under policy`` for each model of the plan, for messages."""
    return " + ".join(f"{g} under {names.get(k, k)}" for g, k in plan.items())


def too_small(budget: BudgetSpec, limit: float, cheapest: tuple[str, str], cost: float, source: str,
              names: Mapping[str, str]) -> ConfigError:
    """The error of a budget below the cheapest plan: names the plan and its cost."""
    g, k = cheapest
    if math.isinf(cost):
        return ConfigError(f"{budget.setting()}: no model has a recorded timing on this device and "
                           f"budget.probe_images={budget.probe_images}; set budget.probe_images (e.g. 32) to time a "
                           "few test images first.")
    return ConfigError(f"{budget.setting()}: no plan fits in {limit:.3g} s; the cheapest plan, model {g} under "
                       f"{names.get(k, k)} alone, costs {cost:.3g} s on the test set ({source}). Raise the budget "
                       "to at least that, or set budget.seconds=null.")


def plan_spec(ens: EnsembleSpec, plan: Plan, models: Sequence[str]) -> EnsembleSpec:
    """The ensemble settings for a plan's models: ``given_weights`` only for those models."""
    if ens.weights != "given" or not ens.given_weights:
        return ens
    return replace(ens, given_weights=[ens.given_weights[list(models).index(g)] for g in plan])


def _plan_rule(ens: EnsembleSpec, metric: str, plan: Plan, models: Sequence[str]) -> Rule:
    if ens.combine == "auto":
        return rule("mean", ens, metric)
    return submitted_rule(plan_spec(ens, plan, models), metric)


def plan_probs(plan: Plan, oof: Mapping[str, Mapping[str, np.ndarray]], labels: np.ndarray, ens: EnsembleSpec,
               metric: str, models: Sequence[str]) -> np.ndarray:
    """The plan's honest OOF predictions: its rule cross-fitted on the one split (applied as is when it fits
    nothing, or when the rows are too few to cross-fit)."""
    r = _plan_rule(ens, metric, plan, models)
    probs = [np.asarray(oof[g][k], np.float32) for g, k in plan.items()]
    if r.scored_cross_fitted and len(labels) >= 2 * ens.cross_fit_parts:
        return cross_fit(r, probs, labels, ens.cross_fit_parts, ens.seed)
    return r.fit(probs, labels).apply(probs)


def _options(costs: Mapping[str, Mapping[str, float]], own: Mapping[str, Mapping[str, float]], sign: float,
             notes: list[str]) -> dict[str, list[str]]:
    """Each model's policies; beyond :data:`MAX_PLANS` plans, the worst-scoring policies of the largest model go."""
    options = {g: [k for k in per if math.isfinite(per[k])] for g, per in costs.items()}
    while math.prod(len(v) + 1 for v in options.values()) - 1 > MAX_PLANS:
        g = max(options, key=lambda m: len(options[m]))
        worst = min(options[g], key=lambda k: sign * own[g][k])
        options[g].remove(worst)
        notes.append(f"more than {MAX_PLANS} plans: policy {worst} of model {g} left out (its worst OOF score)")
    return options


def _plans(options: Mapping[str, Sequence[str]]) -> Iterator[Plan]:
    for combo in itertools.product(*[[None, *keys] for keys in options.values()]):
        plan = {g: k for g, k in zip(options, combo) if k is not None}
        if plan:
            yield plan


def _pid(plan: Plan) -> str:
    return ",".join(f"{g}={k}" for g, k in plan.items())


def choose_plan(oof: Mapping[str, Mapping[str, np.ndarray]], labels: np.ndarray,
                costs: Mapping[str, Mapping[str, float]], limit: float, ens: EnsembleSpec, metric: str,
                margin: Margin, names: Mapping[str, str]) -> tuple[Plan, dict[str, Any]]:
    """The plan to submit among those whose cost fits ``limit`` (see the module docstring), and its record.

    Args:
        oof: Model → policy key → ``[N, K]`` OOF probabilities (rows aligned with ``labels``).
        labels: ``[N]`` labels.
        costs: Model → policy key → seconds on the whole test set.
        limit: The budget in seconds.
        ens: The ensemble settings (rule, ``cross_fit_parts``, ``seed``).
        metric: The competition metric.
        margin: The margin a plan must beat the baseline by.
        names: Policy key → readable name.

    Returns:
        The chosen plan, and ``{plan, cost_seconds, score, baseline, reason, plans_compared, frontier, notes}``
        (``frontier``: every plan no cheaper plan scores as well as, cheapest first, with its fitted weights).
    """
    m, models = get_metric(metric), list(oof)
    notes: list[str] = []
    sign = 1.0 if m.greater_is_better else -1.0
    own = {g: {k: float(m(labels, oof[g][k])) for k in costs[g]} for g in costs}
    plans = list(_plans(_options(costs, own, sign, notes)))
    cost = {_pid(p): sum(costs[g][k] for g, k in p.items()) for p in plans}
    crossed = {_pid(p): plan_probs(p, oof, labels, ens, metric, models) for p in plans}
    scores = {i: float(m(labels, v)) for i, v in crossed.items()}
    smooth = {i: float(get_metric(SMOOTH)(labels, v)) for i, v in crossed.items()}
    fits = sorted((p for p in plans if cost[_pid(p)] <= limit), key=lambda p: (cost[_pid(p)], len(p)))
    singles = [p for p in fits if len(p) == 1 and next(iter(p.values())).split(".")[0] == "none"]
    base = max(singles, key=lambda p: (sign * scores[_pid(p)], -smooth[_pid(p)])) if singles else fits[0]
    passing = [_pid(base)]
    for p in fits:
        if p is not base and passes_margin(labels, crossed[_pid(p)], crossed[_pid(base)], m, margin)[0]:
            passing.append(_pid(p))
    chosen_id = pick_best(m, scores, smooth, passing)
    chosen = next(p for p in fits if _pid(p) == chosen_id)
    what = "the best single model without TTA" if singles else "the cheapest plan"
    if chosen is base:
        reason = f"no plan that fits beat {what} ({plan_text(base, names)}) beyond noise ({margin_text(margin)})"
    else:
        reason = (f"best cross-fitted {metric} ({scores[chosen_id]:.4f}) of the {len(passing) - 1} plan(s) that fit "
                  f"and beat {what} ({plan_text(base, names)}, {scores[_pid(base)]:.4f}) beyond noise "
                  f"({margin_text(margin)})")
    return chosen, {"plan": {g: names.get(k, k) for g, k in chosen.items()}, "keys": dict(chosen),
                    "cost_seconds": cost[chosen_id], "score": scores[chosen_id], "baseline": plan_text(base, names),
                    "reason": reason, "plans_compared": len(fits), "plans_scored": len(plans), "notes": notes,
                    "frontier": _frontier(plans, cost, scores, sign, oof, labels, ens, metric, models)}


def _frontier(plans: Sequence[Plan], cost: Mapping[str, float], scores: Mapping[str, float], sign: float,
              oof: Mapping[str, Mapping[str, np.ndarray]], labels: np.ndarray, ens: EnsembleSpec, metric: str,
              models: Sequence[str]) -> list[dict[str, Any]]:
    """Plans no cheaper plan scores as well as, cheapest first, each with its rule's weights fitted on all rows."""
    out: list[dict[str, Any]] = []
    best = -math.inf
    for p in sorted(plans, key=lambda p: (cost[_pid(p)], -sign * scores[_pid(p)])):
        if sign * scores[_pid(p)] > best:
            best = sign * scores[_pid(p)]
            fitted = _plan_rule(ens, metric, p, models).fit([oof[g][k] for g, k in p.items()], labels)
            out.append({"keys": dict(p), "cost_seconds": cost[_pid(p)], "score": scores[_pid(p)],
                        "weights": dict(zip(p, map(float, fitted.weights))) if fitted.kind == "weighted" else None})
    return out


def price(budget: BudgetSpec, models: Mapping[str, Sequence[Member]], templates: Mapping[str, TTAPolicy],
          oof: Mapping[str, Mapping[str, Path]], test: Any, opts: PredictOptions, run: Runner,
          names: Mapping[str, str]) -> dict[str, Any]:
    """The test set's cost per model and policy on this device, checked against the budget before any output.

    Raises:
        ConfigError: The budget is smaller than the cheapest plan (the message names it and its cost).
    """
    n, device = len(test), str(opts.torch_device())
    costs, source, stale = costs_of(timings(models, templates, oof, {}), n, device)
    if stale and budget.probe_images > 0:
        for (g, k), spk in probe_timings(models, test, stale, templates, opts, budget.probe_images, run).items():
            costs[g][k] = spk * n / 1000.0
            source[g][k] = f"measured on {device} (a quick timing on {min(budget.probe_images, n)} test images)"
    limit = budget.limit(n)
    g, k = min(((g, k) for g in costs for k in costs[g]), key=lambda gk: costs[gk[0]][gk[1]])
    if costs[g][k] > limit:
        raise too_small(budget, limit, (g, k), costs[g][k], source[g][k], names)
    return {"costs": costs, "source": source, "limit": limit, "n_test": n, "setting": budget.setting()}


def within(priced: Mapping[str, Any], configured: Plan, oof: Mapping[str, Mapping[str, np.ndarray]],
           labels: np.ndarray | None, ens: EnsembleSpec, metric: str, margin: Margin, names: Mapping[str, str],
           ) -> tuple[Plan | None, dict[str, Any]]:
    """The configured plan when it fits (None), else :func:`choose_plan`'s; the ``budget`` record of ``predict.json``.

    Raises:
        ConfigError: The configured plan does not fit and there are no OOF rows to score smaller plans on.
    """
    costs, source, limit = priced["costs"], priced["source"], priced["limit"]
    spent = sum(costs[g][k] for g, k in configured.items())
    shown = {g: names.get(k, k) for g, k in configured.items()}
    record: dict[str, Any] = {
        "setting": priced["setting"], "limit_seconds": limit, "n_test": priced["n_test"],
        "configured": {"plan": shown, "cost_seconds": spent, "fits": spent <= limit},
        "costs": {g: {names.get(k, k): {"seconds": c, "source": source[g][k]} for k, c in per.items()}
                  for g, per in costs.items()}}
    if spent <= limit:
        plan, chosen = None, {"plan": shown, "keys": dict(configured), "cost_seconds": spent,
                              "reason": f"the configured plan fits ({spent:.3g} s ≤ {limit:.3g} s)"}
    elif labels is None or not oof:
        raise ConfigError(f"{priced['setting']}: the configured plan ({plan_text(configured, names)}) costs "
                          f"{spent:.3g} s > {limit:.3g} s, and without OOF predictions no smaller plan can be scored; "
                          "use mode=full, or export the members with --predict-dir.")
    else:
        scorable = {g: {k: costs[g][k] for k in oof[g]} for g in oof}
        plan, chosen = choose_plan(oof, labels, scorable, limit, ens, metric, margin, names)
    used = plan or configured
    left = [f"model {g} ({names.get(k, k)}, {costs[g][k]:.3g} s)" for g, k in configured.items() if g not in used]
    left += [f"model {g}: {names.get(k, k)} → {names.get(used[g], used[g])}" for g, k in configured.items()
             if g in used and used[g] != k]
    estimated = sorted({source[g][k] for g, k in used.items() if not source[g][k].startswith("measured")})
    return plan, record | chosen | {"left_out": left, "estimated": bool(estimated), "estimated_from": estimated}


def within_frames(priced: dict[str, Any], frames: dict[str, dict[str, pd.DataFrame]], model_keys: dict[str, str],
                   weights: dict[str, float], combiner: Combiner | None, ens: EnsembleSpec, metric: str,
                   names: dict[str, str]) -> tuple[dict[str, str] | None, dict[str, Any]]:
    """:func:`pipeline.predict.budget.within` on the OOF frames (a plain merge's models of weight 0 cost nothing)."""
    plain = combiner is None or (combiner.kind == "weighted" and combiner.temperatures is None)
    configured = {g: k for g, k in model_keys.items() if not plain or weights.get(g, 0.0) > 0}
    first = next(iter(frames.values()), {})
    labels = frame_labels(next(iter(first.values()))) if first else None
    oof = {g: {k: frame_outputs(frames[k][g]) for k in frames} for g in first}
    return within(priced, configured, oof if frames else {}, labels, ens, metric, margin_of(ens.margin, ens.seed), names)
