"""Experiment tracking: Weights & Biases runs (offline by default) for every stage.

W&B runs live inside the member (or predict) folder. Online mode is opt-in; when the service cannot be
reached, ``init`` gives up within ``init_timeout`` seconds and the run falls back to offline mode with
a warning, so a sweep on a machine without network never hangs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

__all__ = ["LoggerSpec", "init_wandb", "resume_wandb"]

log = logging.getLogger(__name__)


@dataclass
class LoggerSpec:
    """The ``logger`` config group."""

    kind: str = "wandb"  # wandb | csv | none
    project: str = "pipeline"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 10.0


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _reachable(base_url: str, timeout: float) -> str | None:
    """None if a TCP connection to the W&B host opens within ``timeout``, else the reason."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return None
    except OSError as err:
        return f"{parsed.hostname}:{port} unreachable ({err})"


def init_wandb(
    spec: LoggerSpec, run_dir: Path, name: str, group: str, job_type: str, config: dict[str, Any]
) -> Any:
    """Start one W&B run whose files live under ``run_dir/wandb``.

    Args:
        spec: logger settings.
        run_dir: member or predict folder.
        name: run name (the member name).
        group: the sweep (``<experiment>/<sweep_name>``).
        job_type: ``train`` or ``predict``.
        config: plain-dict config to log.

    Returns:
        The ``wandb`` run. The caller must call ``run.finish()`` in a ``finally`` block.
    """
    import wandb

    if spec.mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.mode='{spec.mode}' is not one of: offline, online, disabled.")
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = spec.mode
    if mode == "online" and not _has_api_key():
        log.warning("logger.mode=online but no W&B API key is configured (WANDB_API_KEY); logging offline.")
        mode = "offline"
    kwargs: dict[str, Any] = dict(
        project=spec.project, entity=spec.entity, name=name, group=group, job_type=job_type,
        dir=str(run_dir), config=config, tags=list(spec.tags), reinit="finish_previous",
    )
    if mode == "online":
        start = time.monotonic()
        # A cheap socket probe first: wandb's own retries can take minutes without network.
        problem = _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), min(5.0, spec.init_timeout))
        if problem is None:
            try:
                return wandb.init(mode="online", settings=wandb.Settings(init_timeout=spec.init_timeout), **kwargs)
            except Exception as err:  # wandb raises several error types for an unreachable service
                problem = str(err).splitlines()[0]
                wandb.teardown()  # the half-started service would block the offline run
        log.warning(
            "W&B online init failed after %.0f s (%s); falling back to offline mode. Upload later with `wandb sync %s`.",
            time.monotonic() - start, problem, run_dir / "wandb",
        )
        mode = "offline"
    return wandb.init(mode=mode, **kwargs)  # type: ignore[arg-type]


def resume_wandb(run_id: str, run_dir: str | Path, spec: LoggerSpec, project: str | None = None,
                 entity: str | None = None) -> Any:
    """Resume an earlier stage's run (the report logs into the predict run); online falls back to offline."""
    import wandb

    def init(mode: str, settings: Any = None) -> Any:
        return wandb.init(
            id=run_id, resume="allow", dir=str(run_dir), reinit="finish_previous",
            project=project or spec.project, entity=entity or spec.entity, mode=cast(Any, mode), settings=settings,
        )

    if spec.mode == "online":
        try:
            return init("online", wandb.Settings(init_timeout=spec.init_timeout))
        except Exception as err:  # wandb raises several error types for an unreachable service
            log.warning("W&B online resume failed (%s); logging offline.", err)
            return init("offline")
    return init(spec.mode)
