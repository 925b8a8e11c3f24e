"""Shared benchmark helpers: machine facts, interleaved timing, profiles, data sets, members, results.

Every figure a benchmark reports is a *ratio* of contenders timed side by side in one process: each
repeat runs every contender once, in an order that rotates from repeat to repeat, so a burst of load
from a neighbour hits all of them alike. A contender's time is the median over repeats; a ratio is the
median of the per-repeat ratios (paired), which cancels slow drifts in machine load.

Results are plain JSON (``benchmarks/results/<name>.json``) that :mod:`benchmarks.run_all` renders
into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_WORKDIR",
    "add_sweep_flags",
    "RESULTS_DIR",
    "Elapsed",
    "bench_args",
    "compose_train",
    "interleaved",
    "log_progress",
    "machine_info",
    "make_competition",
    "median",
    "member_loaders",
    "paired_ratio",
    "profile_top",
    "quiet",
    "save_result",
    "target",
    "timing_table",
    "train_member",
    "wins",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "pipeline-bench"


# --------------------------------------------------------------------------- command line and machine


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the benchmarks that train sweeps and score them on test labels: ``--n-boot``, ``--workdir``,
    ``--json``, ``--threads``, and ``--large``/``--repeats``, which :mod:`benchmarks.run_all` passes to every one."""
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="generated data and members (reused)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the result (default: results/<name>.json)")
    parser.add_argument("--large", action="store_true", help="accepted for run_all; unused")
    parser.add_argument("--repeats", type=int, default=5, help="accepted for run_all; unused (seeds repeat here)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def bench_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags every benchmark takes: ``--large``, ``--repeats``, ``--workdir``, ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--large", action="store_true", help="run the larger sizes (slow on a 2-core CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per contender (median; at least 5)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="generated data and members (reused)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the result (default: results/<name>.json)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the timed process (default 1: see RESULTS.md, 'Threads')")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (results are medians of at least 5 repeats)")
    import torch

    torch.set_num_threads(args.threads)
    return args


def quiet() -> None:
    """Silence per-object logging and Lightning's banners so the benchmark output stays readable."""
    logging.basicConfig(level=logging.WARNING)
    for name in ("pipeline", "pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_SILENT", "true")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Date, CPU, cores, library versions, thread counts and GPU (if any) of this run."""
    import pytorch_lightning as pl
    import timm
    import torch
    import torchvision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "pytorch_lightning": pl.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpu": gpu,
    }


# --------------------------------------------------------------------------- timing


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


class Elapsed(float):
    """Return this from a contender to report a time it measured itself (e.g. its second epoch only)."""


def interleaved(
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: dict[str, Callable[[], Any]] | None = None,
    between: Callable[[], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every contender ``repeats`` times, interleaved, in an order rotating each repeat.

    Args:
        contenders: name → zero-argument callable (one complete run); one that returns :class:`Elapsed`
            is timed by that value instead of the wall time of the call.
        repeats: timed runs per contender.
        warmup: name → untimed callable run once first (e.g. the same contender on a small subset), for
            one-off costs: allocator growth, lazy imports, first-call dispatch. None: the contenders.
        between: untimed clean-up called after every run (e.g. deleting output files).

    Returns:
        ``(seconds per contender, the last return value per contender)``.
    """
    names = list(contenders)
    last: dict[str, Any] = {}
    for name in names:
        (warmup or contenders)[name]()
        if between is not None:
            between()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            last[name] = contenders[name]()
            elapsed = time.perf_counter() - start
            times[name].append(float(last[name]) if isinstance(last[name], Elapsed) else elapsed)
            if between is not None:
                between()
    return times, last


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over repeats of ``time[numerator] / time[denominator]`` within the same repeat."""
    return median([a / b for a, b in zip(times[numerator], times[denominator])])


def wins(times: dict[str, list[float]], name: str, other: str) -> str:
    """``k/n``: in how many of the n repeats ``name`` was faster than ``other``."""
    k = sum(a < b for a, b in zip(times[name], times[other]))
    return f"{k}/{len(times[name])}"


def timing_table(
    title: str, times: dict[str, list[float]], baseline: str, items: int | None = None, unit: str = "image",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A results table: median seconds, spread, throughput and the paired ratio to ``baseline``."""
    rows = []
    for name, ts in times.items():
        row: list[Any] = [
            (labels or {}).get(name, name), f"{median(ts):.3f}", f"{min(ts):.3f}–{max(ts):.3f}",
        ]
        if items:
            row.append(f"{items / median(ts):,.0f}")
        ratios = [a / b for a, b in zip(ts, times[baseline])]
        row += [f"{paired_ratio(times, name, baseline):.3f}×", f"{min(ratios):.2f}–{max(ratios):.2f}"]
        rows.append(row)
    columns = ["contender", "median s", "min–max s"] + ([f"{unit}s/s"] if items else []) + [
        f"÷ {baseline} (median)", "per-repeat ratios"]
    return {"title": title, "columns": columns, "rows": rows}


def target(what: str, limit: str, measured: float, met: bool, detail: str = "") -> dict[str, Any]:
    """One target row: what is compared, the target, the measured ratio, whether it was met, and a detail."""
    return {"what": what, "target": limit, "measured": f"{measured:.3f}×", "met": bool(met), "detail": detail}


def profile_top(fn: Callable[[], Any], n: int = 14, sort: str = "tottime") -> str:
    """cProfile one call of ``fn``; the ``n`` functions with the most ``sort`` time, as text."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort)
    stats.print_stats(n)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    return "\n".join(lines[max(0, start - 1):])


def cli(name: str, run: Callable[[bool, int, Path], dict[str, Any]], doc: str) -> None:
    """The ``main`` of a benchmark module: parse the common flags, run it, save its result JSON."""
    quiet()
    args = bench_args(doc.splitlines()[0])
    save_result(name, run(args.large, args.repeats, args.workdir), args.json)


def save_result(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Write a benchmark's result JSON (machine facts added) and return its path."""
    result = {"name": name, "machine": machine_info(), **result}
    out = path or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{name}] wrote {out}")
    return out


# --------------------------------------------------------------------------- data and members


def _fashion_images(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Fashion-MNIST images of the bundled demo subset, resized to ``size`` (tiled past 12,000)."""
    import cv2

    from pipeline.data.demo import SUBSET_FILE

    data = np.load(SUBSET_FILE)
    images = np.concatenate([data["train_images"], data["test_images"]])
    labels = np.concatenate([data["train_labels"], data["test_labels"]])
    resized = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images])
    idx = np.arange(n) % len(images)
    return resized[idx], labels[idx]


def make_competition(root: Path, n_train: int, n_test: int, size: int = 32) -> Path:
    """A Kaggle-style folder of Fashion-MNIST PNGs already at ``size`` px (reused when complete).

    Images are stored at the eval size S, so every contender's resize is the identity and their
    probabilities can be compared exactly.
    """
    import pandas as pd
    from PIL import Image

    from pipeline.data.demo import CLASSES

    done = root / "solution.csv"
    if done.is_file():
        return root
    images, labels = _fashion_images(n_train + n_test, size)
    for split, lo, hi in (("train", 0, n_train), ("test", n_train, n_train + n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(lo, hi):
            Image.fromarray(images[i]).save(root / split / f"{split[:2]}{i - lo:06d}.png", compress_level=1)
    names = np.array(CLASSES)
    tr_ids = [f"tr{i:06d}" for i in range(n_train)]
    te_ids = [f"te{i:06d}" for i in range(n_test)]
    pd.DataFrame({"id": tr_ids, "label": names[labels[:n_train]]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": te_ids, "label": CLASSES[0]}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"id": te_ids, "label": names[labels[n_train:]]}).to_csv(done, index=False)
    return root


def compose_train(overrides: list[str], output_dir: Path | None = None) -> Any:
    """``conf/train.yaml`` composed as the CLI does (without the hydra node); ``paths.output_dir`` set when given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.cli.config import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    if output_dir is not None:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def train_member(sweep: Path, comp: Path, model: str, *overrides: str) -> Path:
    """A real member folder made by ``pipeline.train.fit.train_member`` (a few steps; reused when completed)."""
    from omegaconf import open_dict

    from pipeline.cli.train import train_spec
    from pipeline.train.fit import train_member as fit

    cfg = compose_train([
        "trainer=cpu", "logger=none", f"model={model}", f"data.root={comp}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.limit_train_batches=4", "data.num_workers=0",
        "data.check_images=false", f"paths.root={sweep}", *overrides,
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(sweep / cfg.member_name)
    fit(train_spec(cfg))
    return Path(cfg.paths.output_dir)


def member_loaders(spec: Any, table: Any, folds: Any, mean: list[float], std: list[float]) -> tuple[Any, Any, Any]:
    """A member's train and validation loaders and validation table, as ``train_member`` builds them."""
    from pipeline.train.datamodule import MemberDataModule

    dm = MemberDataModule(spec.data, table, folds, spec.transforms, mean, std, int(spec.seed))
    dm.setup("fit")
    return dm.train_dataloader(), dm.val_dataloader(), dm.val_table


def log_progress(name: str, message: str) -> None:
    """One progress line on stderr (kept out of the JSON)."""
    print(f"[{name}] {message}", file=sys.stderr, flush=True)
