"""Experiment tracking: Weights & Biases runs (offline by default) for every stage.

W&B runs live inside the member (or predict) folder. Online mode is opt-in, and W&B may never cost a
member more than ``logger.init_timeout`` seconds at start and ``logger.finish_timeout`` at exit:

- before going online, one HTTP request to the service (through the user's proxy settings) must be
  answered within a few seconds. A refused port, a missing network, or an endpoint that accepts
  connections but never answers (a dead proxy) fails this probe, and the run is offline at once; W&B's
  own client would wait on such an endpoint for its init timeout and, at exit, once more for its
  telemetry flush (measured: 12–25 s at start and ~21 s at exit with wandb 0.31);
- ``wandb.init`` gets what is left of ``init_timeout``; if it still fails, the run falls back offline;
- ``finish_timeout`` bounds ``run.finish()`` (and W&B's exit hook) when uploads stall; unsent data
  stays on disk for ``wandb sync``.

The mode's precedence: ``logger.mode`` given explicitly (command line, experiment file, ``LoggerSpec(mode=...)``)
> the ``WANDB_MODE`` environment variable > ``offline``. The packaged config's default is
``${oc.env:WANDB_MODE,offline}`` and :class:`LoggerSpec`'s default reads the same variable.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoggerSpec", "init_wandb", "default_mode", "log_files_artifact", "use_files_artifact", "run_tags",
           "is_disabled"]

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's own older spellings of WANDB_MODE


def default_mode() -> str:
    """The mode when none is given explicitly: ``WANDB_MODE`` if set, else ``offline``."""
    return os.environ.get("WANDB_MODE") or "offline"


def _checked_mode(mode: str) -> str:
    """``mode`` as one of :data:`MODES` (W&B's aliases accepted), or a ValueError naming both places it comes from."""
    value = _ALIASES.get(str(mode).strip().lower(), str(mode).strip().lower())
    if value not in MODES:
        raise ValueError(
            f"logger.mode='{mode}' is not one of: {', '.join(MODES)}. The default comes from the WANDB_MODE "
            f"environment variable (now {os.environ.get('WANDB_MODE')!r}); logger.mode=... overrides it."
        )
    return value


@dataclass
class LoggerSpec:
    """The ``logger`` config group."""

    kind: str = "wandb"  # wandb | csv | none
    project: str = "pipeline"
    entity: str | None = None
    mode: str = field(default_factory=default_mode)  # offline | online | disabled; default: WANDB_MODE, else offline
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 10.0  # the most seconds W&B may add at start when online mode cannot be reached
    finish_timeout: float = 10.0  # the most seconds an online run's finish may wait for uploads (0: no limit)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _probe_seconds(init_timeout: float) -> float:
    return max(0.5, min(3.0, init_timeout / 3))


def _unanswered(base_url: str, timeout: float) -> str | None:
    """None if the W&B service answers an HTTP request within ``timeout`` seconds, else why not.

    Any HTTP status counts as an answer. The request honours the proxy environment variables, as W&B
    does, and runs in a daemon thread joined with a deadline, so no DNS or proxy stall can exceed it.
    """
    import requests

    outcome: dict[str, str | None] = {}

    def probe() -> None:
        try:
            requests.get(base_url.rstrip("/") + "/healthz", timeout=(timeout, timeout), allow_redirects=False)
            outcome["problem"] = None
        except requests.RequestException as err:
            outcome["problem"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"

    worker = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if "problem" not in outcome:
        return f"{base_url} accepted the connection but sent no answer within {timeout:.1f} s"
    problem = outcome["problem"]
    return None if problem is None else f"{base_url} did not answer ({problem})"


def _no_network_telemetry() -> None:
    """Stop W&B's own usage telemetry for this process: an offline run must not touch the network.

    wandb (0.31) records telemetry even for offline runs and, at exit, posts it to ``WANDB_BASE_URL`` with
    a 10 s timeout: a dead proxy or endpoint then holds every member's exit for 10 s.
    """
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy
    except ImportError:  # other wandb versions: nothing to stop
        return
    disable = getattr(opentelemetry_proxy, "disable", None)
    if callable(disable):
        disable()


def _settings(spec: LoggerSpec, seconds_left: float | None = None) -> Any:
    """W&B settings: quiet on the terminal unless ``WANDB_SILENT=false``; online runs get the time limits.

    W&B's ``wandb:`` lines (run folder, sync hint, the history table at exit) would bury the pipeline's own
    output, once per member; the run folder still records everything, the console output included
    (``console`` stays W&B's default).
    """
    import wandb

    silent = os.environ.get("WANDB_SILENT", "true").strip().lower() in ("true", "1", "yes", "on")
    if seconds_left is None:
        return wandb.Settings(silent=silent)
    return wandb.Settings(init_timeout=max(1.0, seconds_left), finish_timeout=max(0.0, float(spec.finish_timeout)),
                          silent=silent)


def _go_online(spec: LoggerSpec) -> tuple[str | None, float]:
    """Whether online mode can be tried (None) or why not, and the seconds the probe took."""
    start = time.monotonic()
    problem = _unanswered(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), _probe_seconds(spec.init_timeout))
    return problem, time.monotonic() - start


def run_tags(spec: LoggerSpec, *extra: str | None) -> list[str]:
    """``logger.tags``, then ``extra`` (experiment, model names, task): blanks and repeats dropped, 64 characters each.

    >>> run_tags(LoggerSpec(tags=["baseline"]), "demo", "lenet5", None, "lenet5")
    ['baseline', 'demo', 'lenet5']
    """
    out: list[str] = []
    for tag in [*spec.tags, *extra]:
        text = str(tag or "").strip()[:64]  # W&B refuses longer tags
        if text and text not in out:
            out.append(text)
    return out


def init_wandb(
    spec: LoggerSpec, run_dir: Path, name: str, group: str, job_type: str, config: dict[str, Any],
    tags: Sequence[str | None] = (),
) -> Any:
    """Start one W&B run whose files live under ``run_dir/wandb``.

    Args:
        spec: logger settings.
        run_dir: member or predict folder.
        name: run name (the member name).
        group: the sweep (``<experiment>/<sweep_name>``).
        job_type: ``train``, ``predict`` or ``report``.
        config: plain-dict config to log.
        tags: tags after ``logger.tags`` (:func:`run_tags`): the experiment, the model names, the task.

    Returns:
        The ``wandb`` run. The caller must call ``run.finish()`` in a ``finally`` block.
    """
    import wandb

    mode = _checked_mode(spec.mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    if mode == "online" and not _has_api_key():
        log.warning("logger.mode=online but no W&B API key is configured (WANDB_API_KEY); logging offline.")
        mode = "offline"
    kwargs: dict[str, Any] = dict(
        project=spec.project, entity=spec.entity, name=name, group=group, job_type=job_type,
        dir=str(run_dir), config=config, tags=run_tags(spec, *tags), reinit="finish_previous",
    )
    if mode == "online":
        start = time.monotonic()
        problem, spent = _go_online(spec)
        if problem is None:
            try:
                return wandb.init(mode="online", settings=_settings(spec, spec.init_timeout - spent), **kwargs)
            except Exception as err:  # wandb raises several error types for an unreachable service
                problem = str(err).splitlines()[0]
                wandb.teardown()  # the half-started service would block the offline run
        log.warning(
            "W&B online mode unavailable after %.1f s (%s); logging offline. Upload later with `wandb sync %s`.",
            time.monotonic() - start, problem, run_dir / "wandb",
        )
        mode = "offline"
    if mode != "online":
        _no_network_telemetry()
    return wandb.init(mode=mode, settings=_settings(spec), **kwargs)  # type: ignore[arg-type]


def is_disabled(run: Any) -> bool:
    """Whether ``run`` logs nothing: None, or a run of ``mode=disabled``."""
    return run is None or getattr(run, "disabled", False) or getattr(run.settings, "mode", "") == "disabled"


def _artifact(name: str, kind: str, files: Sequence[Path], metadata: dict[str, Any] | None) -> Any:
    import wandb

    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:128]
    artifact = wandb.Artifact(clean, type=kind, metadata=metadata or {})
    for path in files:
        artifact.add_file(str(path), name=path.name)
    return artifact


def log_files_artifact(
    run: Any, name: str, kind: str, files: Sequence[str | Path], metadata: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Log ``files`` (those that exist) as one W&B artifact ``name`` of type ``kind`` in ``run``.

    Artifact names allow letters, digits, ``-``, ``_`` and ``.``; anything else in ``name`` becomes ``-``.
    A disabled run (``mode=disabled``) logs nothing. Offline, the files are recorded in the run and
    uploaded by ``wandb sync``. W&B gives the new version the alias ``latest``.

    Returns:
        What a later run needs to declare the same version its input (:func:`use_files_artifact`):
        ``{name, type, files (names in the folder), metadata, digest}``; None when nothing was logged.
    """
    present = [Path(f) for f in files if Path(f).is_file()]
    if is_disabled(run) or not present:
        return None
    artifact = _artifact(name, kind, present, metadata)
    run.log_artifact(artifact, aliases=["latest"])
    return {"name": artifact.name, "type": kind, "files": [p.name for p in present], "metadata": metadata or {},
            "digest": artifact.digest}


def use_files_artifact(run: Any, logged: dict[str, Any], folder: Path, aliases: Sequence[str] = ()) -> str | None:
    """Declare what :func:`log_files_artifact` logged (``logged``; its files now in ``folder``) an input of ``run``.

    The same files make the same digest, so W&B resolves the draft to the version training logged and
    records the use (``aliases``, and ``latest``, go to that version). Online this is ``run.use_artifact``;
    offline wandb refuses ``use_artifact``, so the draft is recorded as ``use_artifact`` records it online
    (logged with *use after commit*), and ``wandb sync`` records the use.

    Returns:
        None when recorded, else why not (a file is missing or its contents changed since it was logged).
    """
    if is_disabled(run):
        return "W&B is disabled"
    files = [folder / name for name in logged["files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        return f"{missing[0]} is missing"
    artifact = _artifact(str(logged["name"]), str(logged["type"]), files, logged.get("metadata"))
    if artifact.digest != logged.get("digest"):
        return f"the files {logged['files']} in {folder} changed since artifact {logged['name']} was logged"
    if getattr(run.settings, "_offline", False) or getattr(run.settings, "mode", "") == "offline":
        run._log_artifact(artifact, aliases=list(aliases), is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact, aliases=list(aliases))
    return None
