"""The sweep's Hydra side: the summary callback, the launch configs' resolvers, and failure isolation.

Hydra 1.3's sweepers re-raise the first failed job after the whole batch has run, and then skip
``on_multirun_end``. So in a sweep that uses :class:`SweepSummary`, ``pipeline-train`` records a failed
member in its folder and lets the sweep go on; ``on_multirun_end`` writes the summary, prints the table
and turns failures into a non-zero exit status.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.train.sweep import print_summary, scan_sweep, write_summary

__all__ = ["SweepSummary", "register_resolvers", "continue_sweep_on_failure"]

log = logging.getLogger(__name__)

_CALLBACK_TARGET = "pipeline.cli.sweep.SweepSummary"


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
