"""Benchmark 10: the score on held-back labels at 25 %, 50 % and 100 % of the full plan's time (issue 22).

Replays the predict folders :mod:`benchmarks.bench_choice` left in every uplift sweep (``predict-all``:
every policy on the OOF rows *and* the test set, with the timings predict recorded) under a time budget,
without retraining or predicting again. The full plan is the configured default, Caruana weights over
every model under ten_crop (horizontal flips), its cost the recorded OOF seconds per 1,000 images of its
models of non-zero weight, scaled to the test set. At 25 %, 50 % and 100 % of that cost the library's own
:func:`pipeline.predict.budget.within` chooses the plan (the configured plan when it fits; else the members ×
policies with the best cross-fitted score that fit, by ``ensemble.margin``'s rule, one-sided 95 %, or with
no margin); the chosen plan's Caruana merge, fitted on the OOF rows, is scored on the test labels, which
neither training nor the choice saw, with a paired-bootstrap 95 % interval of the difference to the full plan.

    python -m benchmarks.bench_budget                 # every sweep bench_choice predicted in --workdir
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_choice import _arrays
from benchmarks.bench_uplift import DATASETS
from benchmarks.common import add_sweep_flags, log_progress, machine_info, quiet, save_result

__all__ = ["FRACTIONS", "evaluate_sweep", "main"]

NAME = "budget"
NOTES = [
    "Machine: 2-core AMD EPYC VM, no GPU, shared with other jobs; the replay itself measures no time: costs are "
    "the OOF timings recorded when bench_choice predicted (model compute, 1 torch thread, the machine under load).",
    "Members as in the choice benchmark: resnet10t, resnet10t, lenet5 per sweep, trained until their validation "
    "log loss stopped improving; 300 OOF rows (20 % holdout of 1,500), 500 test rows.",
    "Cells: test accuracy (difference to the full plan in points [paired-bootstrap 95 % interval, 1,000 "
    "resamples]; the chosen plan's recorded cost as a share of the full plan's; the plan). 'runs significantly "
    "worse' counts runs whose interval lies below 0. The 100 % rows are the full plan by construction (it fits).",
]
FRACTIONS = (0.25, 0.5, 1.0)
MARGINS = {"margin 95%": 0.05, "no margin": None}


def evaluate_sweep(folder: Path, comp: Path, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """One run: the full plan and each budget's plan, scored on the test labels against the full plan.

    Every budget scores the same plans on the same OOF rows, so their cross-fitted predictions are computed
    once per run (the library's :func:`pipeline.predict.budget.plan_probs`, cached here).
    """
    import pipeline.predict.budget as budget

    original, cache = budget.plan_probs, {}

    def cached(plan: dict[str, str], *args: Any) -> np.ndarray:
        key = tuple(plan.items())
        if key not in cache:
            cache[key] = original(plan, *args)
        return cache[key]

    budget.plan_probs = cached  # type: ignore[assignment]
    try:
        return _evaluate(folder, comp, n_boot, seed)
    finally:
        budget.plan_probs = original  # type: ignore[assignment]


def _evaluate(folder: Path, comp: Path, n_boot: int, seed: int) -> list[dict[str, Any]]:
    from pipeline.core.metrics import get_metric, paired_bootstrap
    from pipeline.predict.budget import costs_of, within
    from pipeline.predict.choose import margin_of
    from pipeline.predict.fitting import rule
    from pipeline.predict.spec import EnsembleSpec

    a = _arrays(folder, comp)
    pr, test, labels = a["pr"], a["test"], a["test_labels"]
    metric, n_test = get_metric(pr.info["metric"]), len(labels)
    ten = next(k for k, p in pr.policies.items() if p["name"] == "ten_crop" and p.get("flip") == "horizontal")
    costs, source, _ = costs_of(pr.info["timings"], n_test, "None")
    costs = {g: {k: c for k, c in per.items() if k in pr.policies} for g, per in costs.items()}
    spec = EnsembleSpec(weights="caruana", fit_metric="log_loss")
    caruana = rule("caruana", spec, metric.name)
    full = caruana.fit([pr.oof[(m, ten)] for m in pr.models], pr.labels)
    configured = {m: ten for m, w in zip(pr.models, full.weights) if w > 0}
    full_cost = sum(costs[g][k] for g, k in configured.items())
    full_test = full.apply([test[(m, ten)] for m in pr.models])
    oof = {g: {k: pr.oof[(g, k)] for k in pr.policies} for g in pr.models}
    out = []
    for label, level in MARGINS.items():
        for frac in FRACTIONS:
            limit = frac * full_cost
            priced = {"costs": costs, "source": source, "limit": limit, "n_test": n_test,
                      "setting": f"budget.seconds={limit:.3g}"}
            cheapest = min(c for per in costs.values() for c in per.values())
            if cheapest > limit:
                out.append({"margin": label, "fraction": frac, "plan": "nothing fits", "score": None})
                continue
            plan, record = within(priced, configured, oof, pr.labels, spec, metric.name, margin_of(level, 0),
                                  pr.policy_names)
            plan = plan or configured
            fitted = rule("caruana", spec, metric.name).fit([oof[g][k] for g, k in plan.items()], pr.labels)
            probs = fitted.apply([test[(g, k)] for g, k in plan.items()])
            boot = paired_bootstrap(labels, probs, full_test, metric, n_boot=n_boot, seed=seed)
            spent = sum(costs[g][k] for g, k in plan.items())
            shown = ", ".join(f"{g}/{pr.policy_names[k]}" for g, k in plan.items())
            out.append({"margin": label, "fraction": frac, "plan": shown, "cost": spent / full_cost,
                        "score": float(metric(labels, probs)), "full": float(metric(labels, full_test)),
                        "diff": boot.diff, "low": boot.low, "high": boot.high, "metric": metric.name,
                        "cv_score": record.get("score"), "n_test": n_test})
    return out


def _table(name: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    seeds, rows = sorted(runs), []
    for label in MARGINS:
        for frac in FRACTIONS:
            cells, diffs, worse = [], [], 0
            for s in seeds:
                hit = next(r for r in runs[s] if r["margin"] == label and r["fraction"] == frac)
                if hit["score"] is None:
                    cells.append("nothing fits")
                    continue
                cells.append(f"{hit['score']:.4f} ({100 * hit['diff']:+.1f} [{100 * hit['low']:+.1f}, "
                             f"{100 * hit['high']:+.1f}]; {100 * hit['cost']:.0f}% time; {hit['plan']})")
                diffs.append(100 * hit["diff"])
                worse += hit["high"] < 0
            mean = f"{statistics.mean(diffs):+.2f}" if diffs else "–"
            rows.append([f"{int(100 * frac)}% of the full plan's time, {label}", *cells, mean, str(worse)])
    metric = next(r["metric"] for s in seeds for r in runs[s] if r["score"] is not None)
    return {"title": f"{name}: test {metric} under a time budget, difference to the full plan (points) [95% CI]",
            "columns": ["budget", *seeds, "mean diff (points)", "runs significantly worse"], "rows": rows}


def main(argv: list[str] | None = None) -> None:
    """CLI: replay every sweep's ``predict-all`` under the budgets; save ``benchmarks/results/budget.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_flags(parser)
    parser.add_argument("--size", default="1500-500-e40-p4-b32", help="the uplift sweeps' size tag")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    quiet()
    tables, raw = [], {}
    for name in DATASETS:
        comp = args.workdir / "uplift" / f"{name}-{args.size.split('-e')[0]}"
        runs = {}
        for sweep in sorted((args.workdir / "uplift" / f"{name}-{args.size}").glob("seed*")):
            if (sweep / "predict-all" / "predict.json").is_file():
                runs[sweep.name] = evaluate_sweep(sweep / "predict-all", comp, args.n_boot, 0)
                log_progress(NAME, f"{name} {sweep.name}: done")
        if runs:
            tables.append(_table(name, runs))
            raw[name] = runs
    machine = machine_info()
    save_result(NAME, {"title": f"Time budgets on hidden test labels ({machine['date']})", "what": __doc__,
                       "params": {"size": args.size, "fractions": list(FRACTIONS), "margins": MARGINS},
                       "tables": tables, "targets": [], "notes": NOTES, "runs": raw}, args.json)


if __name__ == "__main__":
    main()
