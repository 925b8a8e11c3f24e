"""One member on several processes (DDP): the other ranks' fit, and a clean process afterwards.

Lightning starts ranks 1… by re-running this process's command line; the command line layer supplies
how (``relaunch``, see :mod:`pipeline.cli.train`), because only it knows the command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytorch_lightning as pl
import torch

__all__ = ["fit_other_rank", "distributed_scope"]

log = logging.getLogger(__name__)

# Environment variables Lightning sets in the process that launches a DDP member's other ranks.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


def fit_other_rank(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, resume: Path | None
) -> None:
    """``fit`` on a DDP rank other than 0: a failure is logged here and recorded by rank 0.

    Lightning SIGKILLs the process that started the ranks (which may be running a whole sweep) as soon
    as one of them exits non-zero. Rank 0 fails too once this rank has left, and records the member.
    """
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    except Exception:
        log.exception("DDP rank %d failed; rank 0 records the member's failure.", trainer.global_rank)


def _stop_children(procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Wait for the ranks Lightning started; kill the ones stuck (e.g. in a collective after rank 0 failed)."""
    deadline = time.monotonic() + timeout
    stuck = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(proc)
    if stuck:
        # Lightning's child-process observer SIGKILLs this process when a child dies non-zero; it watches
        # this very list, so empty it first. This process lives on to run the sweep's next member.
        procs.clear()
        for proc in stuck:
            log.warning("Killing DDP rank process %d, still running after this member ended.", proc.pid)
            proc.kill()
            proc.wait()


def _script_children(trainer: pl.Trainer) -> list[subprocess.Popen] | None:
    """The rank processes this process starts by re-running its command line; None when it starts none.

    Found through public attributes only (the launcher's ``procs`` list and its cluster environment's
    ``creates_processes_externally``), so a Lightning upgrade that renames its launcher classes does not break it.
    """
    launcher = trainer.strategy.launcher
    procs = getattr(launcher, "procs", None)
    environment = getattr(launcher, "cluster_environment", None)
    if not isinstance(procs, list) or environment is None or environment.creates_processes_externally:
        return None
    return procs


@contextlib.contextmanager
def distributed_scope(
    trainer: pl.Trainer, member_dir: Path, relaunch: Callable[[Path], AbstractContextManager[None]] | None = None
) -> Iterator[None]:
    """Run ``fit`` with several processes and leave this process clean for the sweep's next member.

    Lightning leaves its DDP environment variables and process group behind; the next member of a
    sweep in this process would then wait for ranks that never come.
    """
    if trainer.world_size == 1:
        yield
        return
    children = _script_children(trainer)
    spawns, procs = children is not None, children or []
    saved_env, threads = {k: os.environ.get(k) for k in _DDP_ENV}, torch.get_num_threads()
    try:
        with relaunch(member_dir) if spawns and relaunch is not None else contextlib.nullcontext():
            yield
    finally:
        if torch.distributed.is_initialized():  # also unblocks ranks waiting in a collective after a failure
            torch.distributed.destroy_process_group()
        if spawns:
            _stop_children(procs)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            torch.set_num_threads(threads)
