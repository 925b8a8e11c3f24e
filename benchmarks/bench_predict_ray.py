"""Benchmark: the predict stage's speed-up from 1 to 2 Ray workers (2 members, CPU, the same total work).

Two real members (``resnet10t``, seeds 0 and 1, a few training steps at 32→28 px) predict the same test
images under ``ten_crop`` with ``pipeline.submission.stage.submit`` in inference-only mode (``mode=submit``:
test images only; equal weights), the whole stage timed: Ray start, the tasks, merge and submission.

* **ray_1worker**: ``distribute.backend=ray`` on a local Ray with ``num_cpus=1``: the two member tasks run
  one after the other, 1 core and 1 torch thread each.
* **ray_2workers**: the same with ``num_cpus=2``: the two tasks run side by side.
* **local** (``--large`` only): no Ray, one process with 1 torch thread (both members in one pass).

Every run writes into a fresh prediction cache, so nothing is reused between runs. The speed-up is
bounded by the cores actually free: the machine's other jobs are stated with the result.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

from benchmarks.common import (
    bench_args,
    interleaved,
    log_progress,
    machine_info,
    make_competition,
    paired_ratio,
    quiet,
    save_result,
    target,
    timing_table,
    train_member,
    wins,
)

__all__ = ["run", "main"]

NAME = "predict_ray"


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time the three contenders interleaved; the paired ratio of 1 to 2 workers is the speed-up."""
    from pipeline.data.spec import DataSpec
    from pipeline.predict.distributed import DistributeSpec
    from pipeline.predict.spec import EnsembleSpec, PredictOptions
    from pipeline.predict.tta import create_policy
    from pipeline.submission.spec import SubmissionOptions
    from pipeline.submission.stage import submit

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    n_test = 8_000 if large else 1_000
    comp = make_competition(workdir / f"fmnist-train1000-test{n_test}", n_train=1000, n_test=n_test)
    log_progress(NAME, "training 2 resnet10t members (a few steps; reused)")
    members = [str(train_member(workdir / "sweep-ray", comp, "resnet10t", f"seed={s}")) for s in (0, 1)]
    spec = DataSpec(root=str(comp), image_size=32, crop_size=28, in_chans=1)
    runs = itertools.count()
    out = workdir / "predict-ray"

    def contender(dist: DistributeSpec | None) -> Any:
        def call() -> None:
            folder = out / f"run{next(runs)}"
            opts = PredictOptions(device="cpu", mode="submit", num_workers=0, prediction_cache_dir=str(folder / "cache"))
            submit(members, spec, [], create_policy("ten_crop"), folder / "predict", opts, EnsembleSpec(),
                   SubmissionOptions(), dist=dist)
        return call

    def ray(cpus: int) -> DistributeSpec:
        return DistributeSpec(backend="ray", address="local", num_cpus=cpus, num_gpus=0, gpus_per_task=0, cpus_per_task=1)

    contenders = {"ray_1worker": contender(ray(1)), "ray_2workers": contender(ray(2))}
    if large:
        contenders["local"] = contender(None)
    times, _ = interleaved(contenders, repeats, warmup={}, between=lambda: shutil.rmtree(out, ignore_errors=True))
    speedup = paired_ratio(times, "ray_1worker", "ray_2workers")
    m = machine_info()
    return {
        "title": "Distributed predict: 1 vs 2 Ray workers on this machine (CPU)",
        "what": __doc__, "params": {"n_test": n_test, "members": 2, "model": "resnet10t", "policy": "ten_crop",
                                    "cpus_per_task": 1, "repeats": repeats},
        "tables": [timing_table(f"{n_test:,} test images × 10 crops × 2 members, whole predict stage", times,
                                "ray_1worker", items=n_test * 2)],
        "targets": [target("speed-up: ray_1worker ÷ ray_2workers", "≥ 1.30×", speedup, speedup >= 1.3,
                           f"2 workers faster in {wins(times, 'ray_2workers', 'ray_1worker')}")],
        "notes": [f"Measured {m['date']} on {m['cpu']}, {m['logical_cores']} logical cores, 1-min load average "
                  f"{m['load_average_1m']} at the end: the machine was shared with other jobs, which bounds the "
                  "speed-up a second worker can give."],
    }


def main() -> None:
    """CLI: ``python -m benchmarks.bench_predict_ray [--large] [--repeats 5]``."""
    quiet()
    args = bench_args(__doc__.splitlines()[0])
    save_result(NAME, run(args.large, args.repeats, args.workdir), args.json)


if __name__ == "__main__":
    main()
