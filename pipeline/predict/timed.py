"""The offline kit's ``--time-budget``: time each model on a few test images here, then predict the plan that fits.

The kit (:mod:`pipeline.predict.kit`) ships ``ensemble.json`` with the submission's fitted weights and, when
predict ran with a budget, the cross-fitted plans it scored (``budget.frontier``: plans no cheaper plan
scores as well as, each with its models' policies and weights). On the target device the kit:

1. times every model × policy a plan needs on ``probe_images`` test images (a temporary cache; nothing is
   written beside the members) and scales it to the test set;
2. keeps the submission when it fits; else predicts the best-scoring recorded plan that fits, with that
   plan's fitted weights; without recorded plans it keeps the models of largest fitted weight that fit,
   their weights re-normalised over what is kept;
3. refuses a budget below the cheapest plan, naming it and its cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.reduce import merge_members
from pipeline.member.folder import Member, find_members
from pipeline.predict.api import Prediction, image_table, predict_images
from pipeline.predict.budget import probe_timings
from pipeline.predict.ensemble import group_models
from pipeline.predict.plan import recorded_policies
from pipeline.predict.runner import predict_members
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import TTAPolicy

__all__ = ["kit_plans", "predict_within", "predict_plan"]

KitPlan = dict[str, Any]
"""``{keys: model → policy key, weights: model → weight, score: cross-fitted score or None, what: str}``."""


def kit_plans(ens: Mapping[str, Any], key: str, weights: Mapping[str, float]) -> list[KitPlan]:
    """The plans the kit may predict, most preferred first: the submission, then the recorded frontier (best
    cross-fitted score first), or without one the submission's models by decreasing fitted weight."""
    kept = {g: float(w) for g, w in weights.items() if w > 0}
    plans = [{"keys": dict.fromkeys(kept, key), "weights": kept, "score": None, "what": "the submission"}]
    frontier = (ens.get("budget") or {}).get("frontier") or []
    if frontier:
        for p in sorted(frontier, key=lambda p: -float(p["score"])):
            plans.append({"keys": p["keys"], "weights": p["weights"] or dict.fromkeys(p["keys"], 1.0),
                          "score": p["score"], "what": f"recorded plan, cross-fitted score {p['score']:.4f}"})
        return plans
    order = sorted(kept, key=lambda g: -kept[g])
    for n in range(len(order) - 1, 0, -1):
        plans.append({"keys": dict.fromkeys(order[:n], key), "weights": {g: kept[g] for g in order[:n]},
                      "score": None, "what": f"the {n} model(s) of largest fitted weight (no plans recorded)"})
    return plans


def _policies(ens: Mapping[str, Any], key: str, policy: TTAPolicy) -> dict[str, TTAPolicy]:
    return recorded_policies(ens.get("policies") or {}) | {key: policy}


def predict_within(members_dir: Any, images: Any, ens: Mapping[str, Any], key: str, policy: TTAPolicy,
                   weights: Mapping[str, float] | None, seconds: float, options: PredictOptions,
                   method: str = "prob_mean", probe_images: int = 16) -> tuple[Prediction, str]:
    """Time, choose and predict the plan that fits ``seconds`` (see the module docstring); the plan in words.

    Raises:
        ConfigError: ``seconds`` is not positive, or smaller than the cheapest plan (naming it and its cost).
    """
    if not seconds > 0:
        raise ConfigError(f"--time-budget {seconds}: accepted: a positive number of seconds.")
    members, _ = find_members(members_dir)
    models = group_models(members)
    table = image_table(images, list(members[0].manifest.classes))
    policies = _policies(ens, key, policy)
    plans = [p for p in kit_plans(ens, key, weights or dict.fromkeys(models, 1.0))
             if all(g in models and k in policies for g, k in p["keys"].items())]
    wanted = list(dict.fromkeys((g, k) for p in plans for g, k in p["keys"].items()))
    per_1000 = probe_timings(models, table, wanted, policies, options, probe_images, predict_members)
    cost = {gk: s * len(table) / 1000.0 for gk, s in per_1000.items()}
    where = f"timed here on {min(probe_images, len(table))} test images, scaled to {len(table)}"
    fitting = [p for p in plans if sum(cost[(g, k)] for g, k in p["keys"].items()) <= seconds]
    if not fitting:
        g, k = min(cost, key=cost.__getitem__)
        raise ConfigError(f"--time-budget {seconds}: no plan fits; the cheapest, model {g} under {policies[k].name} "
                          f"alone, costs {cost[(g, k)]:.3g} s ({where}).")
    plan = fitting[0]
    spent = sum(cost[(g, k)] for g, k in plan["keys"].items())
    left = [g for g in plans[0]["keys"] if g not in plan["keys"]]
    text = (f"Time budget {seconds:g} s: {plan['what']}: "
            + ", ".join(f"{g} under {policies[k].name} (weight {plan['weights'][g]:.3f})" for g, k in plan["keys"].items())
            + f"; {spent:.3g} s ({where})" + (f"; left out: {', '.join(left)}" if left else ""))
    return predict_plan(models, table, plan, policies, options, method), text


def predict_plan(models: Mapping[str, Sequence[Member]], table: Any, plan: KitPlan,
                  policies: Mapping[str, TTAPolicy], options: PredictOptions, method: str) -> Prediction:
    """Each model under its policy (its folds averaged), merged with the plan's weights re-normalised."""
    preds = [predict_images(list(models[g]), table, policies[k], options=options, method=method)
             for g, k in plan["keys"].items()]
    total = sum(float(plan["weights"][g]) for g in plan["keys"])
    w = [float(plan["weights"][g]) / total for g in plan["keys"]]
    probs = merge_members([p.probs for p in preds], weights=w, method=method).numpy()
    return Prediction(preds[0].ids, probs, preds[0].classes)
