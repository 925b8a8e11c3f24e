"""A sweep folder's summary, and where one member ran (host, devices, Ray resources, threads).

A sweep (``pipeline-train -m …``) writes one member folder per job into ``<sweep>/``. Its summary
(``summary.csv`` + ``summary.json``) is rebuilt from those folders alone (``member.json`` status,
``error.txt``), so it is right whichever launcher ran the jobs and however many ran at once. The
Hydra callback that writes it after every job lives in :mod:`pipeline.cli.sweep`.

>>> rows = scan_sweep("outputs/demo/demo")  # doctest: +SKIP
>>> write_summary("outputs/demo/demo", rows)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.core.io import atomic_path, read_json, write_json
from pipeline.member.manifest import MANIFEST, member_status

__all__ = [
    "SUMMARY_CSV",
    "SUMMARY_JSON",
    "RUNTIME",
    "ARTIFACTS_KEY",
    "MemberRow",
    "scan_sweep",
    "write_summary",
    "print_summary",
    "in_ray_task",
    "limit_threads_to_assigned_cpus",
    "runtime_info",
]

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
RUNTIME = "runtime.json"  # where and on what a member ran: host, pid, devices, threads, start/end time
ARTIFACTS_KEY = "wandb_artifacts"  # runtime.json: the W&B artifacts the member logged (train.loggers), for lineage


@dataclass
class MemberRow:
    """One member folder of a sweep, as the summary lists it."""

    member: str
    status: str  # completed | failed | running (still running, or killed without a chance to record it)
    error: str  # first line of error.txt for failed members
    val_acc: float | None
    val_log_loss: float | None
    epochs: int | None
    wall_time_s: float | None
    current: bool  # changed by the command that wrote the summary (False: left by an earlier command)
    path: str
    val_rmse: float | None = None  # regression and ordinal members (no accuracy or log loss)


def _first_line(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _row(folder: Path, since: float | None) -> MemberRow:
    status = member_status(folder)
    error = _first_line(folder / "error.txt") if status == "failed" and (folder / "error.txt").is_file() else ""
    metrics: dict[str, Any] = {}
    if status == "completed" and (folder / "metrics.json").is_file():
        metrics = read_json(folder / "metrics.json")
    marks = [p.stat().st_mtime for p in (folder / MANIFEST, folder / "error.txt") if p.is_file()]
    return MemberRow(
        member=folder.name, status=status, error=error, val_acc=metrics.get("val_acc"),
        val_log_loss=metrics.get("val_log_loss"), epochs=metrics.get("epochs"), wall_time_s=metrics.get("wall_time_s"),
        current=since is None or (bool(marks) and max(marks) >= since), path=str(folder),
        val_rmse=metrics.get("val_rmse"),
    )


def scan_sweep(sweep_dir: str | Path, since: float | None = None) -> list[MemberRow]:
    """Every member folder of a sweep (a sub-folder with ``member.json`` or ``error.txt``), sorted by name.

    Args:
        sweep_dir: the sweep folder.
        since: a time stamp; members whose status files are older are marked ``current=False``.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    folders = [
        p for p in sorted(sweep_dir.iterdir())
        if p.is_dir() and not p.name.startswith(".") and ((p / MANIFEST).is_file() or (p / "error.txt").is_file())
    ]
    return [_row(p, since) for p in folders]


def write_summary(sweep_dir: str | Path, rows: list[MemberRow]) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.json`` into the sweep folder, each atomically."""
    sweep_dir = Path(sweep_dir)
    csv_path, json_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_JSON
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(MemberRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    counts = {s: sum(r.status == s for r in rows) for s in ("completed", "failed", "running")}
    write_json(json_path, {
        "sweep": str(sweep_dir), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": counts,
        "members": [asdict(r) for r in rows],
    })
    return csv_path, json_path


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_summary(rows: list[MemberRow], title: str) -> None:
    """Print the members as a table (rich): status, validation scores, and the error of failed ones."""
    from rich.console import Console
    from rich.table import Table

    colour = {"completed": "green", "failed": "red", "running": "yellow"}
    table = Table(title=title, title_justify="left")
    values = any(r.val_rmse is not None for r in rows)  # regression or ordinal members: their RMSE instead
    scores = ("val_rmse",) if values else ("val_acc", "val_log_loss")
    for name in ("member", "status", *scores, "epochs", "error"):
        table.add_column(name, overflow="fold", max_width=70 if name == "error" else None)
    for r in rows:
        status = r.status if r.current else f"{r.status} (earlier run)"
        shown = [_fmt(r.val_rmse)] if values else [_fmt(r.val_acc), _fmt(r.val_log_loss)]
        table.add_row(
            r.member, f"[{colour.get(r.status, 'white')}]{status}[/]", *shown,
            "" if r.epochs is None else str(r.epochs), r.error,
        )
    Console(width=max(120, Console().width)).print(table)


def _ray_assigned() -> dict[str, float]:
    ray = sys.modules.get("ray")  # only a Ray worker has ray imported; never import it here
    if ray is None or not ray.is_initialized():
        return {}
    try:
        return dict(ray.get_runtime_context().get_assigned_resources())
    except Exception:  # the driver, or a Ray version without this API: nothing assigned
        return {}


def in_ray_task() -> bool:
    """True inside a Ray task (a member run by ``launcher=ray``)."""
    return bool(_ray_assigned())


def limit_threads_to_assigned_cpus() -> int | None:
    """In a Ray task, use as many torch/OpenMP threads as CPUs Ray assigned it; return that number.

    Parallel CPU members would otherwise each start one thread per core and slow each other down.
    """
    cpus = _ray_assigned().get("CPU")
    if not cpus:
        return None
    import torch

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # for processes this member starts
        os.environ[var] = str(n)
    return n


def runtime_info() -> dict[str, Any]:
    """Where this process runs: host, pid, visible devices, Ray resources, SLURM job, torch threads."""
    import torch

    return {
        "host": socket.gethostname(), "pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "ray_resources": _ray_assigned() or None, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "torch_threads": torch.get_num_threads(),
    }
