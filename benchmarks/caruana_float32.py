"""Peak RSS and time of Caruana selection: the float64 version before issue 14 vs the float32, chunked one.

Each implementation runs in its own process on the same random members; the old one is read from git
(commit ``c372913``, before the change), so this needs a git checkout::

    python -m benchmarks.caruana_float32 --rows 50000 --classes 100 --members 8

Not part of ``run_all``: a one-off comparison recorded in docs/uplift.md.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OLD_COMMIT = "c372913"


def _measure(which: str, rows: int, classes: int, members: int, old_dir: str) -> None:
    if which == "old":
        sys.path.insert(0, old_dir)
        from old_ensemble import caruana_select  # type: ignore[import-not-found]
    else:
        from pipeline.predict.ensemble import caruana_select
    from pipeline.core.metrics import get_metric

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, rows)
    probs = []
    for _ in range(members):
        p = rng.random((rows, classes), dtype=np.float32)
        probs.append(p / p.sum(1, keepdims=True))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    weights = caruana_select(probs, labels, n_rounds=5, metric=get_metric("log_loss"))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{which}: inputs {members * rows * classes * 4 / 2**20:.0f} MiB, peak RSS growth {peak - before:.0f} MiB, "
          f"{seconds:.1f} s, weights {np.round(weights, 3).tolist()}")


def main() -> None:
    """Run both implementations side by side and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--which", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--old-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        _measure(args.which, args.rows, args.classes, args.members, args.old_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = subprocess.run(["git", "show", f"{OLD_COMMIT}:pipeline/predict/ensemble.py"], check=True,
                                capture_output=True, text=True).stdout
        Path(tmp, "old_ensemble.py").write_text(source)
        for which in ("old", "new"):
            subprocess.run([sys.executable, "-m", "benchmarks.caruana_float32", "--which", which, "--old-dir", tmp,
                            "--rows", str(args.rows), "--classes", str(args.classes), "--members", str(args.members)],
                           check=True)


if __name__ == "__main__":
    main()
