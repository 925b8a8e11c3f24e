"""What each model adds to the submitted ensemble, and which recipe differences bought diversity or score.

One row per model of the submitted ensemble (report.md's "What each model adds", ``report.json`` →
``savings.droppable.models``): its deployed weight, its architecture and training recipe in short (from
the ``recipe`` of its members' ``member.json``), its mean correlation with the other models
(:func:`pipeline.report.diagnostics.member_correlation` under the submission's policy), the score change
when it is left out (:func:`pipeline.report.savings.droppable_models`, computed once) and its inference
cost (seconds per 1,000 images, as the cost column of the report's table counts it).

Then, per recipe feature whose value differs between models (architecture, Mixup, EMA…), the models whose
value is not the most common one are compared with the rest:

- **diversity**: the mean correlation of the pairs of models that differ in the feature against that of the
  pairs that share it; lower by more than :data:`DIVERSITY_MARGIN` counts as diversity bought;
- **score**: whether leaving any of them out lowers the score beyond noise (the droppable rule);
- **cost**: their seconds per 1,000 images, when they bought neither.

With a handful of models the features are confounded with one another and with the seeds, so the
paragraph calls this an observation, not a proof.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.member.manifest import MemberManifest, read_manifest
from pipeline.report.diagnostics import member_correlation
from pipeline.report.load import PredictRun
from pipeline.report.score import Row, row_cost

__all__ = ["DIVERSITY_MARGIN", "recipe_features", "model_recipes", "describe_members", "recipe_sentences",
           "render_member_table"]

T = TypeVar("T", str, tuple[str, ...])

DIVERSITY_MARGIN = 0.05
"""A mean pairwise correlation lower by less than this is "about as correlated" (no diversity bought)."""

DEFAULTS = {"loss": "cross-entropy", "label_smoothing": "no label smoothing", "mixup": "no mixup",
            "cutmix": "no cutmix", "scheduler": "constant LR", "warmup": "no warmup", "precision": "32-true",
            "accumulation": "no accumulation", "averaging": "no EMA/SWA", "snapshots": "no snapshots",
            "teacher": "no teacher"}
"""Each training-recipe feature and its label when the member used the default (what ``plain`` means)."""

NAMES = {"architecture": "architecture", "loss": "loss", "label_smoothing": "label smoothing", "mixup": "Mixup",
         "cutmix": "CutMix", "scheduler": "LR scheduler", "warmup": "warmup", "precision": "precision",
         "accumulation": "gradient accumulation", "averaging": "weight averaging",
         "snapshots": "snapshots", "teacher": "teacher (pseudo-labels or distillation)"}


def _num(value: Any) -> str:
    return f"{float(value):g}"


def recipe_features(manifest: MemberManifest) -> dict[str, str] | None:
    """The member's architecture and each recipe feature as a short label; None when it records no recipe.

    >>> from pipeline.member.manifest import Recipe
    >>> m = MemberManifest("a", "resnet10t", 2, 3, ["x", "y"], 8, 8, [0.5] * 3, [0.5] * 3, 0, 0, 0, 0, "h",
    ...                    recipe=Recipe(mixup={"mixup": 0.2, "cutmix": 0.0, "mixup_prob": 1.0}))
    >>> f = recipe_features(m)
    >>> f["architecture"], f["mixup"], f["cutmix"]
    ('resnet10t', 'mixup 0.2', 'no cutmix')
    """
    r = manifest.recipe
    if r is None:
        return None
    mix = r.mixup or {}
    on = float(mix.get("mixup_prob", 1.0)) > 0
    warm = r.warmup or {}
    teacher = getattr(r, "teacher", None)  # recorded by members that trained on pseudo-labels or a teacher's outputs
    warmup = (f"warmup {_num(warm['steps'])} steps" if warm.get("steps") else
              f"warmup {_num(warm['epochs'])} epochs" if warm.get("epochs") else DEFAULTS["warmup"])
    averaging = [f"{name.lower()} {_num(s['decay'])}" if isinstance(s, dict) and "decay" in s else name.lower()
                 for a in r.averaging for name, s in a.items()]
    return {
        "architecture": manifest.model_name,
        "loss": r.loss.replace("_", "-") if r.loss != "cross_entropy" else DEFAULTS["loss"],
        "label_smoothing": f"label smoothing {_num(r.label_smoothing)}" if r.label_smoothing else DEFAULTS[
            "label_smoothing"],
        "mixup": f"mixup {_num(mix['mixup'])}" if on and mix.get("mixup") else DEFAULTS["mixup"],
        "cutmix": f"cutmix {_num(mix['cutmix'])}" if on and mix.get("cutmix") else DEFAULTS["cutmix"],
        "scheduler": r.scheduler.rsplit(".", 1)[-1] if r.scheduler else DEFAULTS["scheduler"],
        "warmup": warmup,
        "precision": r.precision,
        "accumulation": (f"accumulate {r.accumulate_grad_batches}" if r.accumulate_grad_batches > 1 else
                         DEFAULTS["accumulation"]),
        "averaging": " + ".join(averaging) or DEFAULTS["averaging"],
        "snapshots": f"{r.snapshots} snapshots" if r.snapshots else DEFAULTS["snapshots"],
        "teacher": f"teacher {teacher.get('kind')}" if isinstance(teacher, dict) else DEFAULTS["teacher"],
    }


def model_recipes(pr: PredictRun) -> dict[str, dict[str, str] | None]:
    """Model → :func:`recipe_features` of its first fold member whose ``member.json`` can be read (None: none can,
    or it records no recipe: a member from an older version, or a folder that is gone)."""
    out: dict[str, dict[str, str] | None] = {}
    for model, members in pr.models.items():
        out[model] = None
        for member in members:
            folder = pr.info["members"].get(member)
            try:
                manifest = read_manifest(Path(folder)) if folder else None
            except (OSError, ValueError):  # MemberError is a ValueError
                continue
            if manifest is not None:
                out[model] = recipe_features(manifest)
                break
    return out


def _common(values: list[T], default: T | None) -> T:
    """The most common value; a tie goes to the default (so "with it" is the non-default side), else the first."""
    counts = Counter(values)
    top = max(counts.values())
    tied = [v for v in values if counts[v] == top]
    return next((v for v in tied if v == default), tied[0])


def describe_members(pr: PredictRun, row: Row, dropped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of :func:`~pipeline.report.savings.droppable_models` with weight, recipe, correlation and cost.

    Adds per model: ``weight`` (deployed), ``architecture``, ``recipe`` (its non-default features joined by
    `` · ``, ``plain`` when none, None when ``member.json`` records none), ``differs`` (features whose value is
    not the most common one), ``features``, ``mean_correlation`` (with the other models, under ``row``'s
    policy) and ``sec_per_1000_images``.
    """
    recipes = model_recipes(pr)
    known = {m: f for m, f in recipes.items() if f is not None}
    common = {k: _common([f[k] for f in known.values()], DEFAULTS.get(k)) for k in next(iter(known.values()), {})}
    models, matrix = member_correlation(pr, row.key)
    out = []
    for entry in dropped:
        model = entry["model"]
        i = models.index(model)
        others = np.delete(matrix[i], i)
        others = others[np.isfinite(others)]
        features = recipes[model]
        items = [] if features is None else [v for k, v in features.items() if k != "architecture" and
                                             v != DEFAULTS[k]]
        _, _, seconds = row_cost(pr, Row("single", model, row.key, row.probs, {model: 1.0}))
        out.append({**entry, "weight": float(row.weights.get(model, 0.0)),
                    "architecture": None if features is None else features["architecture"],
                    "recipe": None if features is None else " · ".join(items) or "plain",
                    "differs": [] if features is None else [k for k, v in features.items() if v != common[k]],
                    "features": features,
                    "mean_correlation": float(others.mean()) if others.size else None,
                    "sec_per_1000_images": None if np.isnan(seconds) else float(seconds)})
    return out


def _pairs(pr: PredictRun, key: str) -> dict[tuple[str, str], float]:
    models, matrix = member_correlation(pr, key)
    return {(a, b): float(matrix[i, j]) for i, a in enumerate(models) for j, b in enumerate(models)
            if i < j and np.isfinite(matrix[i, j])}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _feature_sentence(features: list[str], rows: list[dict[str, Any]], pairs: dict[tuple[str, str], float],
                      metric: str) -> str:
    """One sentence for features that split the models the same way (they cannot be told apart)."""
    values = {r["model"]: tuple(r["features"][k] for k in features) for r in rows}
    common = _common(list(values.values()), tuple(DEFAULTS.get(k, "") for k in features))
    side = [r for r in rows if values[r["model"]] != common]
    names = " and ".join(NAMES[k] for k in features)
    labels = "; ".join(f"{r['model']}: {', '.join(values[r['model']])}" for r in side)
    what = f"The difference in {names} ({labels}; the others: {', '.join(common)})"
    cross = _mean([c for (a, b), c in pairs.items() if values[a] != values[b]])
    same = _mean([c for (a, b), c in pairs.items() if values[a] == values[b]])
    bought_div: bool | None = None
    if cross is None:
        diversity = "the correlations are undefined"
    elif same is None:
        diversity = (f"no two models share a value, so the diversity (mean correlation {cross:.2f}) cannot be told "
                     "apart from the other differences")
    else:
        bought_div = cross < same - DIVERSITY_MARGIN
        verb = "less" if bought_div else "more" if cross > same + DIVERSITY_MARGIN else "about as"
        than = "as" if verb == "about as" else "than"
        diversity = f"pairs of models that differ in it are {verb} correlated ({cross:.2f}) {than} pairs that share it " \
                    f"({same:.2f})"
    used = [r for r in side if not r.get("unused")]
    scored = [r for r in used if not r["free"]]
    if scored:
        score = f"leaving {', '.join(r['model'] for r in scored)} out lowers {metric} beyond noise"
    elif used:
        score = f"leaving {'it' if len(used) == 1 else 'any of them'} out does not lower {metric} beyond noise"
    else:
        return f"{what} cost nothing: the submitted weights give {'it' if len(side) == 1 else 'them'} 0."
    seconds = [r["sec_per_1000_images"] for r in used]
    cost = f"{sum(seconds):.3g} s per 1,000 images" if None not in seconds else "its inference cost"
    verdict = {(True, True): "bought diversity and score", (True, False): "bought score but not diversity",
               (True, None): "bought score", (False, True): f"bought diversity but no score beyond noise, for {cost}",
               (False, False): f"only bought cost ({cost})",
               (False, None): f"bought no score beyond noise, for {cost}"}[(bool(scored), bought_div)]
    return f"{what} {verdict}: {diversity}; {score}."


def _groups(features: list[str], rows: list[dict[str, Any]]) -> list[list[str]]:
    """The features, those that split the models into the same groups together (in feature order)."""
    out: dict[frozenset[frozenset[str]], list[str]] = {}
    for k in features:
        split: dict[str, set[str]] = {}
        for r in rows:
            split.setdefault(r["features"][k], set()).add(r["model"])
        out.setdefault(frozenset(frozenset(g) for g in split.values()), []).append(k)
    return list(out.values())


def recipe_sentences(pr: PredictRun, row: Row, rows: list[dict[str, Any]], metric: str) -> list[str]:
    """Per recipe feature that differs between the models, what the models with the less common value bought."""
    known = [r for r in rows if r["features"] is not None]
    missing = [r["model"] for r in rows if r["features"] is None]
    if len(known) < 2:
        return [f"{'Only 1' if known else 'None'} of the {len(rows)} models' member.json records a training recipe "
                "(members from an older version, or folders that are gone), so recipes are not compared."]
    out = [f"The member.json of {', '.join(missing)} records no training recipe (a member from an older version, "
           "or its folder is gone), so recipes are compared without it."] if missing else []
    differ = [k for k in known[0]["features"] if len({r["features"][k] for r in known}) > 1]
    caveat = (f"with {len(known)} models this is an observation, not a proof, since each difference is "
              "confounded with the others and with the seeds")
    if not [k for k in differ if k != "architecture"]:
        source = "architectures and seeds" if "architecture" in differ else "seeds"
        out.append(f"The training recipes do not differ between the models, so their diversity came from "
                   f"{source} only.")
    if differ:
        pairs = _pairs(pr, row.key)
        out.append(f"What the differences bought ({caveat}):")
        out += [_feature_sentence(group, known, pairs, metric) for group in _groups(differ, known)]
    return out


def render_member_table(drop: dict[str, Any]) -> list[str]:
    """report.md's "What each model adds" section (empty when the report did not compute it)."""
    models = drop.get("models") or []
    if not models or "recipe" not in models[0]:
        return []
    lines = ["## What each model adds", "",
             f"Each model of the submitted ensemble ({drop['row']}); Δ is the score without it minus the score "
             "with it (95% paired bootstrap interval; negative for a higher-is-better metric means the model "
             "helped); mean corr. = its mean correlation with the other models, as in the correlation plot; "
             "**bold** recipe items differ from the most common recipe.", "",
             "| model | architecture | weight | recipe | mean corr. | Δ when left out [95% CI] | s/1000 img | "
             "free to drop |", "|---|---|--:|---|--:|--:|--:|:-:|"]
    for r in models:
        features = r["features"] or {}
        items = [f"**{v}**" if k in r["differs"] else v for k, v in features.items()
                 if k != "architecture" and (k in r["differs"] or v != DEFAULTS[k])]
        recipe = "–" if r["recipe"] is None else " · ".join(items) or "plain"
        arch = "–" if r["architecture"] is None else (
            f"**{r['architecture']}**" if "architecture" in r["differs"] else r["architecture"])
        corr = "–" if r["mean_correlation"] is None else f"{r['mean_correlation']:.2f}"
        sec = "–" if r["sec_per_1000_images"] is None else f"{r['sec_per_1000_images']:.3g}"
        diff = "weight 0" if r["unused"] else f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        lines.append(f"| {r['model']} | {arch} | {r['weight']:.2f} | {recipe} | {corr} | {diff} | {sec} | "
                     f"{'yes' if r['free'] else 'no'} |")
    return [*lines, ""]
