"""Distributed predict: one task per member, each on its own device (Ray, or SLURM through submitit).

Each task runs :func:`pipeline.predict.runner.predict_members` for its one member, which writes that
member's prediction cache exactly as a single-process run does (same file names, written to a temporary
file and renamed). The driver then merges the members, fits the weights and writes the submission from
those files: the same files, so the same submission, byte for byte.

``distribute.backend`` (the ``distribute`` group of ``conf/predict.yaml``):

- ``none``: everything in this process (the default);
- ``ray``: ``ray.init(address=…)`` (None: a new local Ray; ``auto``: the running cluster), one
  ``@ray.remote(num_gpus=gpus_per_task)`` task per member; Ray sets ``CUDA_VISIBLE_DEVICES`` per task;
- ``slurm``: one submitit array job per member; ``submitit_local`` runs the same jobs on this machine.

On a cluster, members, data and ``predict_dir`` must lie on a file system every node mounts (paths are
absolute); the driver checks that every file a task reports is there before it merges.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from pipeline.data.tables import ImageTable
    from pipeline.member.folder import Member
    from pipeline.predict.spec import PredictOptions
    from pipeline.predict.tta import TTAPolicy

__all__ = ["BACKENDS", "DistributeSpec", "distribute_spec", "distributed", "run_task"]

log = logging.getLogger(__name__)

BACKENDS = ("none", "ray", "slurm", "submitit_local")
"""``distribute.backend`` values."""

Files = dict[tuple[str, str], Path]
Runner = Callable[..., Files]


@dataclass
class DistributeSpec:
    """The ``distribute`` group: where the members' predictions run.

    Attributes:
        backend: One of :data:`BACKENDS`.
        gpus_per_task: Devices per task (member); None: 1 when the Ray cluster (or SLURM) has GPUs, else 0.
        cpus_per_task: CPU cores per task, and the task's torch threads.
        address: Ray: None starts a local Ray (``local`` too), ``auto`` joins the running cluster, or
            ``ray://host:port``.
        num_gpus: Ray, local only: GPUs the new Ray may hand out (None: those it detects).
        num_cpus: Ray, local only: CPUs the new Ray may hand out (None: those it detects).
        folder: submitit: job logs and pickles (None: ``<predict_dir>/.submitit``).
        partition: SLURM partition.
        account: SLURM account.
        timeout_min: SLURM time limit per task, in minutes.
        setup: SLURM: shell lines run before each task (e.g. ``source .venv/bin/activate``).
    """

    backend: str = "none"
    gpus_per_task: float | None = None
    cpus_per_task: int = 1
    address: str | None = None
    num_gpus: int | None = None
    num_cpus: int | None = None
    folder: str | None = None
    partition: str | None = None
    account: str | None = None
    timeout_min: int = 60
    setup: list[str] = field(default_factory=list)


def distribute_spec(values: Mapping[str, Any] | None) -> DistributeSpec:
    """A checked :class:`DistributeSpec` from the ``distribute`` config node (None: everything local).

    Raises:
        ConfigError: An unknown key, an unknown backend, or a count below its minimum.
    """
    values = dict(values or {})
    known = [f.name for f in fields(DistributeSpec)]
    if unknown := sorted(set(values) - set(known)):
        raise ConfigError(f"distribute: unknown key(s) {unknown}; accepted: {known}")
    spec = DistributeSpec(**values)
    if spec.backend not in BACKENDS:
        raise ConfigError(f"distribute.backend={spec.backend!r}; accepted: {list(BACKENDS)}")
    if spec.cpus_per_task < 1 or (spec.gpus_per_task is not None and spec.gpus_per_task < 0):
        raise ConfigError(f"distribute.cpus_per_task={spec.cpus_per_task} must be ≥ 1 and distribute.gpus_per_task="
                          f"{spec.gpus_per_task} ≥ 0 (or null).")
    if spec.backend == "ray" and spec.address not in (None, "local") and (spec.num_gpus or spec.num_cpus):
        raise ConfigError("distribute.num_gpus/num_cpus size a new local Ray; with distribute.address="
                          f"{spec.address!r} the cluster's own resources are used. Remove them.")
    return spec


def _where() -> dict[str, Any]:
    """Where this task runs: host, pid, visible devices, Ray resources, SLURM job, torch threads."""
    import torch

    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            info["ray_resources"] = dict(ray.get_runtime_context().get_assigned_resources())
    return info


def run_task(member: Member, table: ImageTable, split: str, policies: Mapping[str, TTAPolicy], opts: PredictOptions,
             rows: Mapping[str, Any] | None, fallback_dir: Path | None, threads: int) -> dict[str, Any]:
    """One task: predict ``table`` with one member (writing its prediction cache); its files and where it ran."""
    import torch

    from pipeline.predict.runner import predict_members

    torch.set_num_threads(threads)
    started = time.time()
    own = None if rows is None else {member.name: rows[member.name]}
    files = predict_members([member], table, split, policies, opts, own, fallback_dir)
    return {"member": member.name, "split": split, "files": {key: str(path) for (_, key), path in files.items()},
            **_where(), "started": started, "ended": time.time()}


class _Backend:
    """Runs one round of tasks (one per member) and collects what they report."""

    def __init__(self, spec: DistributeSpec, out_dir: Path) -> None:
        self.spec, self.out_dir = spec, out_dir
        self.records: list[dict[str, Any]] = []

    def start(self) -> None:
        """Connect to (or start) the engine."""

    def stop(self) -> None:
        """Release what :meth:`start` took."""

    def map(self, args: list[tuple[Any, ...]]) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, members: Sequence[Member], table: ImageTable, split: str, policies: Mapping[str, TTAPolicy],
                 opts: PredictOptions, rows: Mapping[str, Any] | None = None, fallback_dir: Path | None = None) -> Files:
        """:func:`~pipeline.predict.runner.predict_members`'s contract, one task per member."""
        args = [(m, table, split, dict(policies), opts, rows, fallback_dir, self.spec.cpus_per_task) for m in members]
        log.info("Predicting %s: %d task(s) on %s", split, len(args), self.spec.backend)
        done = self.map(args)
        self.records += done
        files: Files = {}
        for rec in done:
            for key, path in rec["files"].items():
                if not Path(path).is_file():
                    raise PipelineError(
                        f"Task of member {rec['member']} on {rec['host']} wrote {path}, which this machine cannot see: "
                        "members, data and predict_dir must lie on a file system every node mounts.")
                files[(rec["member"], key)] = Path(path)
        return files


class _Ray(_Backend):
    def start(self) -> None:
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            s = self.spec
            local = s.address in (None, "local")
            sizes: dict[str, Any] = {"num_gpus": s.num_gpus, "num_cpus": s.num_cpus} if local else {}
            ray.init(address=s.address, include_dashboard=False, log_to_driver=False,
                     **{k: v for k, v in sizes.items() if v is not None})
        gpus = self.spec.gpus_per_task
        self.gpus = gpus if gpus is not None else (1 if ray.cluster_resources().get("GPU", 0) > 0 else 0)
        # max_calls=1: each task's worker exits afterwards, so its device memory is freed for the next task.
        self.remote = ray.remote(num_gpus=self.gpus, num_cpus=self.spec.cpus_per_task, max_calls=1)(run_task)

    def stop(self) -> None:
        import ray

        if self.started:
            ray.shutdown()

    def map(self, args: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        import ray

        shared = [ray.put(a) for a in args[0][1:]]  # the table and options once in the object store, not per task
        return list(ray.get([self.remote.remote(a[0], *shared) for a in args]))


class _Submitit(_Backend):
    def start(self) -> None:
        import submitit

        s = self.spec
        local = s.backend == "submitit_local"
        folder = Path(s.folder) if s.folder else self.out_dir / ".submitit"
        self.executor = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm")
        params: dict[str, Any] = {"timeout_min": s.timeout_min, "nodes": 1, "tasks_per_node": 1,
                                  "cpus_per_task": s.cpus_per_task,
                                  "gpus_per_node": int(s.gpus_per_task if s.gpus_per_task is not None else (0 if local else 1))}
        if not local:
            params.update({k: v for k, v in (("slurm_partition", s.partition), ("slurm_account", s.account),
                                             ("slurm_setup", list(s.setup) or None)) if v})
        self.executor.update_parameters(**params)

    def map(self, args: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        jobs = self.executor.map_array(run_task, *zip(*args))
        return [job.result() for job in jobs]


@contextlib.contextmanager
def distributed(spec: DistributeSpec | None, out_dir: Path) -> Iterator[tuple[Runner, list[dict[str, Any]]]]:
    """The predict runner for ``spec``, and the list its tasks' records are appended to.

    ``backend: none`` yields :func:`~pipeline.predict.runner.predict_members` itself; otherwise a runner with
    its signature that runs one task per member on the engine, which stays up until the block ends.
    """
    from pipeline.predict.runner import predict_members

    if spec is None or spec.backend == "none":
        yield predict_members, []
        return
    backend = (_Ray if spec.backend == "ray" else _Submitit)(spec, out_dir)
    backend.start()
    try:
        yield backend, backend.records
    finally:
        backend.stop()


def task_summary(records: list[dict[str, Any]], spec: DistributeSpec | None) -> dict[str, Any] | None:
    """``predict.json``'s record of the distributed run: the settings and where each task ran."""
    if spec is None or spec.backend == "none":
        return None
    return {**asdict(spec), "tasks": records}
