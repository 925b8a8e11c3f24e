"""Sweeps and launchers: the sweep folder's summary, and what one member needs to run under any launcher.

A sweep (``pipeline-train -m …``) writes one member folder per job into ``<sweep>/``. Its summary
(``summary.csv`` + ``summary.json``) is rebuilt from those folders alone (``member.json`` status,
``error.txt``), so it is right whichever launcher ran the jobs and however many ran at once.

Hydra 1.3's sweepers re-raise the first failed job after the whole batch has run, and then skip
``on_multirun_end``. So in a sweep that uses :class:`SweepSummary`, ``pipeline-train`` records a failed
member in its folder and lets the sweep go on; ``on_multirun_end`` writes the summary, prints the table
and turns failures into a non-zero exit status.

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

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.member import MANIFEST, member_status
from pipeline.utils import atomic_path, read_json, write_json

__all__ = [
    "SUMMARY_CSV",
    "SUMMARY_JSON",
    "RUNTIME",
    "MemberRow",
    "scan_sweep",
    "write_summary",
    "print_summary",
    "SweepSummary",
    "register_resolvers",
    "continue_sweep_on_failure",
    "in_ray_task",
    "limit_threads_to_assigned_cpus",
    "runtime_info",
]

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
RUNTIME = "runtime.json"  # where and on what a member ran: host, pid, devices, threads, start/end time
_CALLBACK_TARGET = "pipeline.sweep.SweepSummary"


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
    for name in ("member", "status", "val_acc", "val_log_loss", "epochs", "error"):
        table.add_column(name, overflow="fold", max_width=70 if name == "error" else None)
    for r in rows:
        status = r.status if r.current else f"{r.status} (earlier run)"
        table.add_row(
            r.member, f"[{colour.get(r.status, 'white')}]{status}[/]", _fmt(r.val_acc), _fmt(r.val_log_loss),
            "" if r.epochs is None else str(r.epochs), r.error,
        )
    Console(width=max(120, Console().width)).print(table)


class SweepSummary(Callback):
    """Hydra callback: keep ``<sweep>/summary.{csv,json}`` up to date; fail the command if a member failed.

    ``on_job_end`` runs wherever the job ran (this process for the basic launcher, the worker for Ray
    and submitit) and refreshes the summary after every member, so a long sweep shows its progress.
    ``on_multirun_end`` runs in the launching process once all jobs are done: it writes the final
    summary, prints it, and exits with status 1 when a member of this command failed.
    """

    def __init__(self) -> None:
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Pickled with the launcher after this, so Ray and submitit workers see the same start time.
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            write_summary(sweep_dir, scan_sweep(sweep_dir, self.started))
        except OSError as err:  # a progress snapshot; the final summary is written at the end
            log.warning("Could not update the sweep summary in %s: %s", sweep_dir, err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = scan_sweep(sweep_dir, self.started)
        csv_path, _ = write_summary(sweep_dir, rows)
        failed = [r for r in rows if r.status == "failed" and r.current]
        earlier = sum(r.status == "failed" and not r.current for r in rows)
        done = sum(r.status == "completed" for r in rows)
        title = f"Sweep {sweep_dir}: {done} completed, {len(failed)} failed" + (f", {earlier} failed earlier" if earlier else "")
        print_summary(rows, title)
        if failed:
            names = ", ".join(r.member for r in failed)
            # Hydra turns exceptions raised in callbacks into warnings; only SystemExit ends the command.
            sys.exit(f"{len(failed)} of {len(rows)} members failed ({names}); see {csv_path}")


def _abspath(path: str) -> str:
    if os.path.isabs(os.path.expanduser(str(path))):
        return os.path.normpath(os.path.expanduser(str(path)))
    # Inside a job Hydra's runtime.cwd is the launching process's directory, even in a Ray worker on
    # another node; in the launching process itself (a sweeper, before any job) it is not set yet.
    base = str(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else os.getcwd()
    return os.path.normpath(os.path.join(base, str(path)))


def register_resolvers() -> None:
    """Resolvers of the launch configs: ``${abspath:path}`` and ``${gpus_per_member:address}``.

    ``abspath`` makes ``path`` absolute against the directory ``pipeline-train`` was started in.

    Sweep and run folders use it, so a worker that resolves them in another directory (a Ray worker
    on another node) still writes where the launching process expects.
    """
    OmegaConf.register_new_resolver("abspath", _abspath, replace=True)
    OmegaConf.register_new_resolver("gpus_per_member", _gpus_per_member, replace=True)


def _gpus_per_member(address: Any = None) -> int:
    """``${gpus_per_member:address}``: 1 GPU per Ray task when there are GPUs, else 0 (CPU members).

    A local Ray counts this machine's GPUs; a cluster (``address`` set) is assumed to have them, since
    this process may run on a head node without any. Override ``hydra.launcher.ray.remote.num_gpus``.
    """
    if address not in (None, "", "local"):
        return 1
    import torch

    return 1 if torch.cuda.device_count() > 0 else 0


def continue_sweep_on_failure() -> bool:
    """True inside a multirun job whose failures :class:`SweepSummary` reports at the end."""
    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    targets = [str(c.get("_target_", "")) for c in (hc.callbacks or {}).values()]
    return hc.mode == RunMode.MULTIRUN and _CALLBACK_TARGET in targets


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
