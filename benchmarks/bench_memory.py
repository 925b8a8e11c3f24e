"""Benchmark 4: peak memory of the whole predict stage at 5,000 and at 50,000 test images.

Each size runs ``pipeline.submission.stage.submit`` (validation OOF rows, test predictions with the
``ten_crop`` policy, ensemble, submission) for one real LeNet-5 member in a fresh subprocess, with
predict's defaults (batch 256, 2 loader workers). Reported per size:

* the predict process's own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) and its RSS right
  before ``predict`` (imports, model code);
* the largest loader worker's peak RSS (``getrusage(RUSAGE_CHILDREN)`` inside the child);
* the peak of the whole process tree (predict + workers), sampled every 50 ms with psutil.
  Workers share pages with the parent after ``fork``, so this sum over-counts.

Memory does not need repeats the way timings do: one run per size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import bench_args, log_progress, make_competition, quiet, save_result, target

__all__ = ["run", "main", "child"]

NAME = "memory"


def child(n_test: int, workdir: Path, threads: int) -> dict[str, Any]:
    """Inside the subprocess: run predict on ``n_test`` images and report memory."""
    import torch

    from benchmarks.bench_ensemble import ensemble_members
    from pipeline.data.spec import DataSpec
    from pipeline.predict.spec import EnsembleSpec, PredictOptions
    from pipeline.predict.tta import create_policy
    from pipeline.submission.spec import SubmissionOptions
    from pipeline.submission.stage import submit as predict

    torch.set_num_threads(threads)
    (member,) = ensemble_members(workdir, seeds=(0,))
    shutil.rmtree(member.path / "predictions", ignore_errors=True)
    comp = make_competition(workdir / f"fmnist-train1000-test{n_test}", n_train=1000, n_test=n_test)
    out = workdir / f"memory-predict-{n_test}"
    shutil.rmtree(out, ignore_errors=True)
    spec = DataSpec(root=str(comp), image_size=32, crop_size=28, in_chans=1, solution="solution.csv")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    summary = predict([str(member.path)], spec, [], create_policy("ten_crop", 28), out,
                      PredictOptions(device="cpu"), EnsembleSpec(), SubmissionOptions(), "accuracy")
    seconds = time.perf_counter() - start
    shutil.rmtree(member.path / "predictions", ignore_errors=True)
    return {
        "n_test": summary["n_test"], "seconds": seconds, "rss_before_mb": rss_before / 2**20,
        "peak_before_mb": before / 1024, "peak_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _measure(n_test: int, workdir: Path, threads: int) -> dict[str, Any]:
    """Run one child, sampling its process tree's RSS; return the child's report plus the tree peak."""
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", str(n_test), "--workdir", str(workdir),
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_tree_mb": peak / 2**20}


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Both sizes, each in its own subprocess; the ratio of their peaks."""
    import torch

    threads = torch.get_num_threads()
    sizes = (10_000, 100_000) if large else (5_000, 50_000)
    rows, reports = [], []
    for n in sizes:
        log_progress(NAME, f"predict on {n:,} test images in a subprocess")
        make_competition(workdir / f"fmnist-train1000-test{n}", n_train=1000, n_test=n)
        rep = _measure(n, workdir, threads)
        reports.append(rep)
        rows.append([f"{n:,}", f"{rep['seconds']:.1f}", f"{rep['rss_before_mb']:.0f}", f"{rep['peak_self_mb']:.0f}",
                     f"{rep['peak_worker_mb']:.0f}", f"{rep['peak_tree_mb']:.0f}"])
    small, big = reports
    r_self, r_tree = big["peak_self_mb"] / small["peak_self_mb"], big["peak_tree_mb"] / small["peak_tree_mb"]
    extra = (big["peak_self_mb"] - small["peak_self_mb"]) / (sizes[1] - sizes[0]) * 1024
    return {
        "title": f"Memory: peak RSS of predict at {sizes[0]:,} and {sizes[1]:,} test images",
        "what": __doc__, "params": {"sizes": sizes, "policy": "ten_crop", "member": "lenet5", "batch_size": 256,
                                    "workers": 2},
        "tables": [{"title": "One LeNet-5 member, ten_crop, batch 256, 2 loader workers (MiB)",
                    "columns": ["test images", "predict s", "RSS before predict", "peak, predict process",
                                "peak, largest worker", "peak, whole tree (sampled)"], "rows": rows}],
        "targets": [target(f"peak RSS of the predict process, {sizes[1]:,} ÷ {sizes[0]:,} images", "≤ 1.20×", r_self,
                           r_self <= 1.2),
                    target(f"peak RSS of predict + workers, {sizes[1]:,} ÷ {sizes[0]:,} images", "≤ 1.20×", r_tree,
                           r_tree <= 1.2)],
        "notes": [f"The predict process grows by about {extra:.1f} KiB per extra test image (ids, paths and "
                  "per-row bookkeeping held for the whole table)."],
    }


def main() -> None:
    """CLI: ``python -m benchmarks.bench_memory [--large]`` (``--child N`` is the measured subprocess)."""
    quiet()
    if "--child" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", type=int, required=True)
        parser.add_argument("--workdir", type=Path, required=True)
        parser.add_argument("--threads", type=int, default=1)
        args = parser.parse_args()
        print(json.dumps(child(args.child, args.workdir, args.threads)))
        return
    args = bench_args(__doc__.splitlines()[0])
    save_result(NAME, run(args.large, args.repeats, args.workdir), args.json)


if __name__ == "__main__":
    main()
