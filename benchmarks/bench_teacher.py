"""Pseudo-labels and distillation on hidden test labels: generation 2 and a student against generation 1.

For each data set and seed:

1. **generation 1**: a holdout sweep of real members (``resnet10t`` twice and ``lenet5`` by default),
   predicted with ``ensemble=caruana`` (the teacher's predict folder; ``tta=none`` so the rows isolate
   the teacher, not the crops);
2. **generation 2** (``teacher=pseudo``): the same members (same seeds, same epochs) trained again with
   every test image added under the ensemble's soft targets, predicted the same way;
3. **student** (``teacher=distill``): one ``resnet10t`` (a seed no generation-1 member has) trained on
   the ensemble's tempered probabilities (T, alpha), predicted alone;
4. **plain twin**: the generation-1 ``resnet10t`` of the same seed index, i.e. the student's architecture
   and epochs without a teacher.

Every row is scored on the test set's hidden labels (``solution.csv``), which neither training, the
weights nor the teacher's labels saw (the teacher saw the test *images*, as in a Kaggle competition),
against generation 1's best single model by OOF score (the report's baseline rule), with a 95% paired
bootstrap interval. The student's share of the ensemble's gain is its RER ÷ the ensemble's RER. Cost per
1,000 images comes from each predict folder's own timings (``predict.json``), so it is only comparable
within one run.

    python -m benchmarks.bench_teacher --datasets digits,photos,demo          # 3 real data sets × 3 seeds
    python -m benchmarks.bench_teacher --datasets digits --seeds 1 --epochs 1 --n-train 300 --n-test 150   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_uplift import (
    _cell,
    _test_labels,
    make_dataset,
    predict_sweep,
    read_test_probs,
    seed_rows,
    train_sweep,
)
from benchmarks.common import add_sweep_flags, log_progress, machine_info, quiet, save_result

__all__ = ["run", "main"]

NAME = "teacher"
DATASETS = ("digits", "photos", "demo", "shapes")


def _best_by_oof(pr: Any, metric: Any, key: str) -> tuple[str, dict[str, float]]:
    """The model with the best OOF score under policy ``key`` (the report's baseline rule), and every model's score."""
    oof = {m: metric(pr.labels, pr.oof[(m, key)]) for m in pr.models}
    pick = max if metric.greater_is_better else min
    return pick(oof, key=oof.__getitem__), oof


def score_seed(comp: Path, gen1: Path, gen2: Path, student: Path, twin: str, n_boot: int, seed: int) -> list[dict]:
    """Every row of one seed on the test labels, against generation 1's best single model (by OOF score)."""
    from pipeline.core.io import safe_name
    from pipeline.core.metrics import get_metric, paired_bootstrap
    from pipeline.report.compare import submitted_cost
    from pipeline.report.load import load_predict_run
    from pipeline.report.text import relative_error_reduction

    runs = {folder: load_predict_run(folder) for folder in (gen1, gen2, student)}
    pr = runs[gen1]
    metric = get_metric(pr.info["metric"])
    key = next(k for k, p in pr.policies.items() if p["name"] == "none")
    best, oof = _best_by_oof(pr, metric, key)
    gen2_best, gen2_oof = _best_by_oof(runs[gen2], metric, key)

    def test(folder: Path, name: str) -> Any:
        return read_test_probs(folder, name, pr.classes)[1]

    ids, base = read_test_probs(gen1 / "test", f"{safe_name(best)}__{key}.csv", pr.classes)
    labels = _test_labels(comp, ids, pr.classes)
    rows = {
        f"best single, gen 1 ({best})": (base, gen1, oof[best]),
        "ensemble, gen 1 (caruana)": (test(gen1, "ensemble_test.csv"), gen1, None),
        f"best single, gen 2 ({gen2_best})": (test(gen2 / "test", f"{safe_name(gen2_best)}__{key}.csv"), gen2,
                                              gen2_oof[gen2_best]),
        "ensemble, gen 2 (caruana)": (test(gen2, "ensemble_test.csv"), gen2, None),
        f"plain twin ({twin})": (test(gen1 / "test", f"{safe_name(twin)}__{key}.csv"), gen1, oof[twin]),
        "student (distilled)": (test(student, "ensemble_test.csv"), student, None),
    }
    seconds = {folder: submitted_cost(run)[2] for folder, run in runs.items()}
    base_score = metric(labels, base)
    out = []
    for name, (probs, folder, oof_score) in rows.items():
        boot = paired_bootstrap(labels, probs, base, metric, n_boot=n_boot, seed=seed)
        rer = relative_error_reduction(boot.diff, boot.low, boot.high, base_score, metric.greater_is_better)
        single = name.startswith(("best single", "plain twin", "student"))
        out.append({"row": name, "score": float(metric(labels, probs)), "diff": boot.diff, "rer": rer,
                    "oof_score": oof_score, "metric": metric.name, "n_test": len(labels),
                    "sec_per_1000": None if single and folder is not student else seconds[folder]})
    return out


def _kind(row: str) -> str:
    return row.split(" (", 1)[0] if not row.startswith("student") else row


def dataset_table(name: str, runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each row's test score and RER [CI] per seed, the mean RER, and the student's share of the ensemble's gain."""
    seeds = sorted(runs)

    def cell(hit: dict[str, Any], kind: str) -> str:
        extra = f" ({hit['row'].split(' (', 1)[1]}" if " (" in hit["row"] and kind != hit["row"] else ""
        cost = f", {hit['sec_per_1000']:.3g} s/1000" if hit["sec_per_1000"] is not None else ""
        return _cell(hit) + extra + cost

    rows = [[kind, *cells, f"{statistics.mean(rers):+.1f}%" if rers else "–"]
            for kind, cells, rers in seed_rows(runs, _kind, cell)]
    shares = []
    for s in seeds:
        ens = next(r for r in runs[s] if r["row"].startswith("ensemble, gen 1"))["rer"]
        stu = next(r for r in runs[s] if r["row"].startswith("student"))["rer"]
        shares.append("–" if not ens or not stu or ens["rer"] <= 0 else f"{100 * stu['rer'] / ens['rer']:.0f}%")
    rows.append(["student's share of the gen-1 ensemble's RER", *shares, "–"])
    metric = runs[seeds[0]][0]["metric"]
    return {"title": f"{name}: test {metric}, RER vs gen-1 best single model [95% CI], cost per 1,000 images",
            "columns": ["row", *(f"seed {s}" for s in seeds), "mean RER"], "rows": rows}


def run_seed(args: argparse.Namespace, name: str, comp: Path, seed: int) -> list[dict[str, Any]]:
    """Generation 1, its predict folder, generation 2, the student; scored."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    root = args.workdir / "teacher" / f"{name}-{args.n_train}-{args.n_test}-e{args.epochs}-b{args.batch_size}"
    members = [(m, 100 * seed + i) for i, m in enumerate(models)]
    gen1 = root / f"seed{seed}" / "gen1"
    train_sweep(gen1, comp, members, args.epochs, args.batch_size)
    source = predict_sweep(gen1, comp, "caruana", "none", ["none"])
    gen2 = root / f"seed{seed}" / "gen2"
    train_sweep(gen2, comp, members, args.epochs, args.batch_size,
                overrides=["teacher=pseudo", f"teacher.source={source}", f"teacher.threshold={args.threshold}"])
    gen2_predict = predict_sweep(gen2, comp, "caruana", "none", ["none"])
    student = root / f"seed{seed}" / "student"
    train_sweep(student, comp, [(args.student, 100 * seed + 50)], args.epochs, args.batch_size,
                overrides=["teacher=distill", f"teacher.source={source}", f"teacher.temperature={args.temperature}",
                           f"teacher.alpha={args.alpha}"])
    student_predict = predict_sweep(student, comp, "mean", "none", ["none"])
    twin = next(f"{m}-s{s}" for m, s in members if m == args.student)
    return score_seed(comp, source, gen2_predict, student_predict, twin, args.n_boot, seed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every data set × seed; the result JSON."""
    tables, raw, started = [], {}, time.perf_counter()
    for name in args.datasets.split(","):
        comp = make_dataset(name, args.workdir / "uplift" / f"{name}-{args.n_train}-{args.n_test}", args.n_train,
                            args.n_test)
        runs = {}
        for seed in range(args.seeds):
            runs[seed] = run_seed(args, name, comp, seed)
            log_progress(NAME, f"{name} seed {seed}: done ({(time.perf_counter() - started) / 60:.1f} min so far)")
        tables.append(dataset_table(name, runs))
        raw[name] = runs
    machine = machine_info()
    minutes = (time.perf_counter() - started) / 60
    return {
        "title": f"Pseudo-labels and distillation on hidden test labels ({machine['date']})",
        "what": __doc__,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("json",)},
        "tables": tables, "targets": [],
        "notes": [f"Run {machine['date']} on {machine['cpu']} ({machine['usable_cores']} usable cores, GPU: "
                  f"{machine['gpu']}), torch {machine['torch']}; wall time {minutes:.1f} min.",
                  "RER = (baseline error − row error) ÷ baseline error on the test set, baseline = generation 1's "
                  "best single model by OOF score, without TTA; interval: paired bootstrap over test rows.",
                  "The student's share = its RER ÷ the generation-1 ensemble's RER (– when the ensemble did not "
                  "gain); s/1000 = seconds per 1,000 test images of what each predict folder submitted, on this "
                  "machine (single-model rows of an ensemble's folder: –)."],
        "runs": raw,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: run the benchmark and save ``benchmarks/results/teacher.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,photos", help=f"comma-separated subset of {list(DATASETS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="resnet10t,resnet10t,lenet5", help="generation 1 and 2: one member each")
    parser.add_argument("--student", default="resnet10t", help="the student's model (a generation-1 model: its twin)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--threshold", type=float, default=0.0, help="teacher.threshold of generation 2")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    add_sweep_flags(parser)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    quiet()
    save_result(NAME, run(args), args.json)


if __name__ == "__main__":
    main()
