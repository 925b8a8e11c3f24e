"""Benchmark 9: which automatic-choice rule holds up on hidden test labels (issue: choices with honest margins).

For every sweep the uplift benchmark trained (``benchmarks.bench_uplift``: members trained until their
validation log loss stops improving), predict once with ``tta=auto``'s candidates on the OOF rows *and*
the test set (``test_all_policies=true``), then replay every choice rule on those files with the
library's own functions (:func:`pipeline.predict.choose.choose_policies`,
:func:`pipeline.predict.choose.choose_ensemble`, :mod:`pipeline.predict.fitting`): the rule sees only
the OOF rows; its submission is scored on the test labels, which neither training nor the choice saw.

Rows per run: the best single model without TTA (the baseline, chosen on OOF), the configured default
(Caruana + ten_crop), each merge method under ten_crop, and ``tta=auto ensemble=auto`` under each
margin rule:

* ``naive``: the best OOF score wins (no margin; the old ``ensemble=auto``);
* ``log_loss 95%``: a candidate must beat the simpler one with the one-sided 95% paired-bootstrap bound
  of its log-loss gain above zero, and be better on the metric (the new default of ``tta.margin`` and
  ``ensemble.margin``); ``log_loss 80%`` the same at one-sided 80%;
* ``metric 95%`` / ``metric 84%``: the same test on the competition metric itself (84%: about one
  standard error);
* ``TTA best, merge log_loss 95%``: the naive TTA choice, the margin only for the merge.

    python -m benchmarks.bench_choice                 # every sweep bench_uplift left in --workdir
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_uplift import DATASETS, _compose, _test_labels
from benchmarks.common import add_sweep_flags, log_progress, machine_info, quiet, save_result

__all__ = ["RULES", "evaluate_sweep", "main"]

NAME = "choice"
RULES: dict[str, tuple[float | None, str, float | None, str]] = {
    "naive": (None, "log_loss", None, "log_loss"),
    "log_loss 95%": (0.05, "log_loss", 0.05, "log_loss"),
    "log_loss 80%": (0.2, "log_loss", 0.2, "log_loss"),
    "metric 95%": (0.05, "metric", 0.05, "metric"),
    "metric 84%": (0.16, "metric", 0.16, "metric"),
    "TTA best, merge log_loss 95%": (None, "log_loss", 0.05, "log_loss"),
}
"""Rule name → (tta margin level, what its bootstrap tests, ensemble margin level, what its bootstrap tests)."""
METHODS = ("mean", "caruana", "bagged", "optimize", "stack", "rank", "temperature")
CANDIDATES = ["none", "hflip", "vflip", "five_crop", "{name: ten_crop, flip: horizontal}",
              "{name: ten_crop, flip: vertical}"]


def predict_all(sweep: Path, comp: Path) -> Path:
    """``pipeline-predict`` with tta=auto's candidates on OOF and test rows (Caruana weights) → ``predict-all``."""
    from pipeline.cli.predict import run as predict

    out = sweep / "predict-all"
    if (out / "predict.json").is_file():
        return out
    cfg = _compose("predict", [
        "data=demo", f"data.root={comp}", f"members={sweep}", f"predict_dir={out}", "ensemble=caruana", "tta=auto",
        "policies=[none,hflip,vflip,five_crop,ten_crop]", "test_all_policies=true", "logger=none", "device=cpu",
        "num_workers=0", f"paths.root={sweep}",
    ])
    predict(cfg)
    return out


def _arrays(folder: Path, comp: Path) -> dict[str, Any]:
    """OOF (aligned) and test (sorted by id) probabilities per (model, policy key), with their labels."""
    from pipeline.core.io import safe_name
    from pipeline.member.predictions import read_predictions
    from pipeline.report.load import load_predict_run

    pr = load_predict_run(folder)
    test, ids = {}, None
    for model in pr.models:
        for key in pr.policies:
            file_ids, probs, _ = read_predictions(folder / "test" / f"{safe_name(model)}__{key}.csv", pr.classes)
            order = np.argsort(file_ids)
            test[(model, key)] = probs[order]
            ids = [file_ids[i] for i in order]
    assert ids is not None
    return {"pr": pr, "test": test, "test_labels": _test_labels(comp, ids, pr.classes)}


def _auto(a: dict[str, Any], tta: Any, ens: Any) -> tuple[np.ndarray, str]:
    """``tta=auto ensemble=auto`` under one margin rule, replayed on the OOF rows; its test probabilities."""
    from pipeline.predict.choose import SINGLE, SINGLE_TTA, choose_ensemble, choose_policies
    from pipeline.predict.fitting import Margin
    from pipeline.predict.spec import EnsembleSpec

    pr, test = a["pr"], a["test"]
    oof = {m: {k: (pr.labels, pr.oof[(m, k)]) for k in pr.policies} for m in pr.models}
    choice = choose_policies(oof, pr.policies, pr.info["metric"], Margin(level=tta[0], score=tta[1]))
    keys = {m: c["key"] for m, c in choice.items()}
    none = next(k for k, p in pr.policies.items() if p["name"] == "none")
    spec = EnsembleSpec(combine="auto", weights="equal", fit_metric="log_loss",
                        candidates=["mean", "caruana", "optimize", "stack", "rank"])
    combiner, record = choose_ensemble({m: pr.oof[(m, k)] for m, k in keys.items()}, pr.labels,
                                       {m: pr.oof[(m, none)] for m in pr.models}, spec, pr.info["metric"],
                                       Margin(level=ens[0], score=ens[1]))
    chosen = record["chosen"]
    policies = ",".join(sorted({pr.policy_names[k] for k in keys.values()}))
    if chosen in (SINGLE, SINGLE_TTA):
        model = record["models"][0]
        key = none if chosen == SINGLE else keys[model]
        return test[(model, key)], f"{chosen}: {model} / {pr.policy_names[key]}"
    return combiner.apply([test[(m, k)] for m, k in keys.items()]), f"{chosen} / {policies}"


def evaluate_sweep(folder: Path, comp: Path, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Every row of one run, scored on the test labels against the best single model without TTA."""
    from pipeline.core.metrics import get_metric, paired_bootstrap
    from pipeline.predict.fitting import rule
    from pipeline.predict.spec import EnsembleSpec
    from pipeline.report.text import relative_error_reduction

    a = _arrays(folder, comp)
    pr, test, labels = a["pr"], a["test"], a["test_labels"]
    metric = get_metric(pr.info["metric"])
    none = next(k for k, p in pr.policies.items() if p["name"] == "none")
    ten = next(k for k, p in pr.policies.items() if p["name"] == "ten_crop" and p.get("flip") == "horizontal")
    sign = 1 if metric.greater_is_better else -1
    base_model = max(pr.models, key=lambda m: sign * metric(pr.labels, pr.oof[(m, none)]))
    rows: dict[str, np.ndarray] = {f"best single, no TTA ({base_model})": test[(base_model, none)]}
    spec = EnsembleSpec(fit_metric="log_loss")
    for method in METHODS:
        r = rule(method, spec, metric.name)
        fitted = r.fit([pr.oof[(m, ten)] for m in pr.models], pr.labels)
        name = "configured default (caruana + ten_crop)" if method == "caruana" else f"{method} + ten_crop"
        rows[name] = fitted.apply([test[(m, ten)] for m in pr.models])
    for name, (tta_level, tta_on, ens_level, ens_on) in RULES.items():
        probs, what = _auto(a, (tta_level, tta_on), (ens_level, ens_on))
        rows[f"auto, {name} ({what})"] = probs
    base = rows[f"best single, no TTA ({base_model})"]
    base_score = metric(labels, base)
    out = []
    for name, probs in rows.items():
        boot = paired_bootstrap(labels, probs, base, metric, n_boot=n_boot, seed=seed)
        rer = relative_error_reduction(boot.diff, boot.low, boot.high, base_score, metric.greater_is_better)
        out.append({"row": name, "score": metric(labels, probs), "diff": boot.diff, "low": boot.low,
                    "high": boot.high, "rer": rer, "n_test": len(labels), "n_oof": len(pr.labels),
                    "metric": metric.name})
    return out


def _kind(row: str) -> str:
    return row.split(" (", 1)[0]


def _table(name: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    seeds = sorted(runs)
    kinds = list(dict.fromkeys(_kind(r["row"]) for s in seeds for r in runs[s]))
    rows = []
    for kind in kinds:
        cells, rers, worse = [], [], 0
        for s in seeds:
            hit = next(r for r in runs[s] if _kind(r["row"]) == kind)
            rer = hit["rer"]
            detail = hit["row"][len(kind):].strip()
            cells.append(f"{hit['score']:.4f}" + ("" if rer is None else f", RER {100 * rer['rer']:+.1f}% "
                         f"[{100 * rer['low']:+.1f}, {100 * rer['high']:+.1f}]") + (f" {detail}" if detail else ""))
            if rer is not None:
                rers.append(100 * rer["rer"])
                worse += rer["high"] < 0
        mean = f"{statistics.mean(rers):+.1f}%" if rers else "–"
        spread = f"sd {statistics.stdev(rers):.1f}" if len(rers) > 1 else "–"
        rows.append([kind, *cells, mean, spread, str(worse)])
    metric = runs[seeds[0]][0]["metric"]
    return {"title": f"{name}: test {metric}, RER vs the best single model without TTA [95% CI], per run",
            "columns": ["row", *seeds, "mean RER", "spread", "runs significantly worse"], "rows": rows}


def main(argv: list[str] | None = None) -> None:
    """CLI: predict and replay every sweep found; save ``benchmarks/results/choice.json``."""
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
            members = [p for p in sweep.iterdir() if (p / "metrics.json").is_file()]
            if len(members) < 3:
                continue  # still training
            runs[sweep.name] = evaluate_sweep(predict_all(sweep, comp), comp, args.n_boot, 0)
            log_progress(NAME, f"{name} {sweep.name}: done")
        if runs:
            tables.append(_table(name, runs))
            raw[name] = runs
    machine = machine_info()
    save_result(NAME, {"title": f"Choice rules on hidden test labels ({machine['date']})", "what": __doc__,
                       "params": {"size": args.size, "rules": {k: list(v) for k, v in RULES.items()}},
                       "tables": tables, "targets": [], "notes": [], "runs": raw}, args.json)


if __name__ == "__main__":
    main()
