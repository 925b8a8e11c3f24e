"""The sweep's Hydra side: the summary callback, member-folder clashes, the launch resolvers, failure isolation.

Hydra 1.3's sweepers re-raise the first failed job after the whole batch has run, and then skip
``on_multirun_end``. So in a sweep that uses :class:`SweepSummary`, ``pipeline-train`` records a failed
member in its folder and lets the sweep go on; ``on_multirun_end`` writes the summary, prints the table
and turns failures into a non-zero exit status.

Before any job runs, ``on_multirun_start`` expands the sweep as Hydra's basic sweeper will (for an Optuna
search: trials that differ in one searched value each) and composes every job's member folder: a swept
setting that is not part of ``member_name`` (``optimizer.lr=1e-3,2e-3``) would make jobs overwrite each
other's member, so the command stops and says how to name them apart.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.train.sweep import print_summary, scan_sweep, write_summary

__all__ = ["SweepSummary", "register_resolvers", "continue_sweep_on_failure", "member_folder_clashes"]

log = logging.getLogger(__name__)

_CALLBACK_TARGET = "pipeline.cli.sweep.SweepSummary"
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def _sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, expanded exactly as Hydra's basic sweeper expands them (its params included)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    # resolve=False: an override such as member_name="${model.name}-lr${optimizer.lr}" must reach each job as typed.
    raw = OmegaConf.to_container(config.hydra.sweeper, resolve=False).get("params") or {}  # type: ignore[union-attr]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    params = [f"{k}={v}" for k, v in raw.items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + [str(o) for o in task])  # type: ignore[union-attr]
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _search_jobs(config: DictConfig) -> list[list[str]]:
    """Trials an Optuna search can draw: a first one, then one per searched key that differs only there.

    Each searched key takes two of its values (an interval's ends, a choice's or range's first two); fixed
    keys keep theirs. Two trials that differ in any one searched value must land in different folders.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    loader = GlobalHydra.instance().config_loader()
    raw = OmegaConf.to_container(config.hydra.sweeper, resolve=False).get("params") or {}  # type: ignore[union-attr]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(
        [f"{k}={v}" for k, v in raw.items()] + [str(o) for o in task]  # type: ignore[union-attr]
    )
    values: dict[str, list[str]] = {}  # a later override of the same key wins, as in the sweeper
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [override.get_value_element_as_str()]
        elif isinstance(sweep := override.value(), IntervalSweep):
            values[key] = [str(sweep.start), str(sweep.end)]
        else:
            values[key] = list(dict.fromkeys(override.sweep_string_iterator()))[:2]
    first = {k: v[0] for k, v in values.items()}
    jobs = [first] + [{**first, k: v[1]} for k, v in values.items() if len(v) > 1]
    return [[f"{k}={v}" for k, v in job.items()] for job in jobs]


def _job_folder(config: DictConfig, overrides: list[str], num: int) -> tuple[str, DictConfig]:
    """The member folder a job would write (``hydra.sweep.dir/subdir``), composed as the launcher will."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(master_config=config, sweep_overrides=overrides)
    with open_dict(job):
        job.hydra.job.id, job.hydra.job.num = f"job_id_for_{num}", num
    HydraConfig.instance().set_config(job)  # ${hydra:...} in the folder resolves against this job
    return os.path.join(str(job.hydra.sweep.dir), str(job.hydra.sweep.subdir)), job


def _name_token(key: str, job: DictConfig) -> str:
    """``-lr${optimizer.lr}`` for a value, ``-${hydra:runtime.choices.aug}`` for a config group."""
    plain = key.lstrip("+~")
    if isinstance(OmegaConf.select(job, plain, default=None), (str, int, float, bool)):
        return f"-{plain.rsplit('.', 1)[-1]}${{{plain}}}"
    return f"-${{hydra:runtime.choices.{plain}}}"


def member_folder_clashes(config: DictConfig) -> str | None:
    """Why the sweep's jobs would write the same member folder, or None when each has its own.

    Hydra's basic sweeper (the default, also under the Ray, SLURM and submitit launchers) has its jobs
    known in advance; for the Optuna sweeper, trials that differ in one searched value each are checked
    (:func:`_search_jobs`). Other sweepers are not checked.
    """
    target = str(config.hydra.sweeper.get("_target_", ""))
    if target == _BASIC_SWEEPER:
        jobs = _sweep_jobs(config)
    elif target == _OPTUNA_SWEEPER:
        jobs = _search_jobs(config)
    else:
        return None
    if len(jobs) < 2:
        return None
    by_folder: dict[str, list[list[str]]] = {}
    example: DictConfig | None = None
    saved = HydraConfig.instance().cfg
    try:
        for num, overrides in enumerate(jobs):
            folder, job = _job_folder(config, overrides, num)
            by_folder.setdefault(folder, []).append(overrides)
            example = example or job
    finally:
        HydraConfig.instance().cfg = saved
    clashes = {folder: group for folder, group in by_folder.items() if len(group) > 1}
    if not clashes or example is None:
        return None
    lines, swept = [], {}
    for folder, group in clashes.items():
        values = [dict(o.split("=", 1) for o in overrides) for overrides in group]
        differ = [k for k in values[0] if len({v.get(k) for v in values}) > 1]
        swept.update(dict.fromkeys(differ))
        shown = " | ".join(" ".join(f"{k}={v[k]}" for k in differ) or "(identical overrides)" for v in values)
        lines.append(f"  {Path(folder).name} <- {shown}")
    template = str(OmegaConf.to_container(config, resolve=False).get("member_name", ""))  # type: ignore[union-attr]
    tokens = "".join(_name_token(k, example) for k in swept)
    suggested = template.replace("-s${seed}", f"{tokens}-s${{seed}}", 1) if "-s${seed}" in template else template + tokens
    return (
        f"Error: {sum(len(g) for g in clashes.values())} jobs of this sweep would write the same member folder, so "
        "they would overwrite each other's member. A swept setting is not part of member_name:\n"
        + "\n".join(lines)
        + "\nName the members apart, e.g. (the outer single quotes are for the shell)\n"
        f"  'member_name=\"{suggested}\"'\n"
        "or run one command per value, each with its own sweep_name=..."
        + (" (Identical jobs: drop the repeated value.)" if not swept else "")
    )



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
        # Before any job runs or any folder exists: jobs must not share a member folder.
        if clash := member_folder_clashes(config):
            sys.exit(clash)  # Hydra turns exceptions raised in callbacks into warnings
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
    """Resolvers of the launch configs: ``${abspath:path}``, ``${gpus_per_member:address}``, ``${search_direction:mode}``.

    ``abspath`` makes ``path`` absolute against the directory ``pipeline-train`` was started in.

    Sweep and run folders use it, so a worker that resolves them in another directory (a Ray worker
    on another node) still writes where the launching process expects.
    """
    OmegaConf.register_new_resolver("abspath", _abspath, replace=True)
    OmegaConf.register_new_resolver("gpus_per_member", _gpus_per_member, replace=True)
    OmegaConf.register_new_resolver("search_direction", search_direction, replace=True)


def search_direction(monitor_mode: Any) -> str:
    """``${search_direction:${monitor_mode}}``: Optuna's ``minimize``/``maximize`` for ``monitor_mode`` min/max."""
    directions = {"min": "minimize", "max": "maximize"}
    if str(monitor_mode) not in directions:
        raise ValueError(f"monitor_mode={monitor_mode!r} is not one of: min, max (the search direction follows it).")
    return directions[str(monitor_mode)]


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
