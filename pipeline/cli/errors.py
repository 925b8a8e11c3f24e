"""How the command lines report failures: one clear message for a problem the user can fix, a traceback otherwise.

A :class:`~pipeline.core.errors.PipelineError` (bad data, config, member folder, an output folder that
cannot be written) and a permission error are printed as one message, naming the config key that chose
the path, with exit status 1 and no traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback. Anything
else keeps Hydra's usual traceback: it is a bug or an environment problem, and the trace is the clue.

Output folders are checked by the :class:`CheckOutputs` Hydra callback before Hydra creates them, so a
read-only ``paths.output_root`` or ``predict_dir`` is named instead of failing inside Hydra.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import OutputError, PipelineError
from pipeline.core.io import DISK_FULL, check_writable_dir, disk_full_error

__all__ = ["PipelineExit", "compact_errors", "explain", "CheckOutputs", "TRAIN_PATHS", "PREDICT_PATHS", "REPORT_PATHS"]

R = TypeVar("R")

# (the setting to name, the config key holding its resolved path), most useful first.
TRAIN_PATHS = (("paths.output_root", "paths.output_root"), ("hydra.run.dir (hydra.sweep.dir in a sweep)", "paths.output_dir"),
               ("data.cache_dir", "data.cache_dir"), ("data.root", "data.root"))
PREDICT_PATHS = (("predict_dir", "predict_dir"), ("members", "members"), ("paths.output_root", "paths.output_root"),
                 ("data.cache_dir", "data.cache_dir"), ("data.root", "data.root"))
REPORT_PATHS = (("predict_dir", "predict_dir"),)

_NO_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)


class PipelineExit(CompactHydraException):
    """A problem the user can fix, reported by Hydra as its message alone (no traceback)."""


def _setting_for(path: str | os.PathLike[str] | None, cfg: Any, settings: Sequence[tuple[str, str]]) -> str:
    """``key=value`` of the first setting whose folder holds ``path`` (empty when none does)."""
    if path is None or cfg is None:
        return ""
    target = Path(os.path.abspath(os.fspath(path)))
    for name, key in settings:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that cannot resolve here (${hydra:...} outside a job)
            continue
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            continue
        folder = Path(os.path.abspath(os.path.expanduser(str(value))))
        if target == folder or target.is_relative_to(folder):
            return f"{name}={value}" if name == key else name
    return ""


def explain(err: BaseException, cfg: Any = None, settings: Sequence[tuple[str, str]] = ()) -> str | None:
    """The one-message report of ``err`` if the user can fix it, else None (keep the traceback).

    Args:
        err: the exception.
        cfg: the job's config, to find the setting that chose a path.
        settings: ``(name, key)`` pairs of the settings that choose folders (:data:`TRAIN_PATHS`…).
    """
    if isinstance(err, PipelineError):
        message = str(err)
        if isinstance(err, OutputError) and "(set by" not in message:
            if setting := _setting_for(err.path, cfg, settings):
                message += f" The folder is set by {setting}."
        return message
    if isinstance(err, OSError) and err.errno in DISK_FULL:  # written by a library (a checkpoint, a log)
        setting = _setting_for(err.filename, cfg, settings)
        if err.filename is None:
            return (f"A write failed: disk full ({errno.errorcode[err.errno]}: {err.strerror}). Free space on the "
                    "disk that holds the output folders (or write to another disk) and run the command again.")
        message = str(disk_full_error(err.filename, err, removed=False))
        return message + (f" It lies under {setting}." if setting else "")
    if isinstance(err, OSError) and err.errno in _NO_WRITE:
        where = err.filename or "a file"
        setting = _setting_for(err.filename, cfg, settings)
        chosen = f" It lies under {setting}." if setting else ""
        reason = err.strerror or "Permission denied"
        return f"{reason}: {where}.{chosen} Choose a location you can access, or fix its permissions."
    return None


def compact_errors(settings: Sequence[tuple[str, str]]) -> Callable[[Callable[[DictConfig], R]], Callable[[DictConfig], R]]:
    """Wrap a Hydra task so a problem the user can fix ends the command with one message (see :func:`explain`)."""

    def decorate(task: Callable[[DictConfig], R]) -> Callable[[DictConfig], R]:
        @functools.wraps(task)
        def wrapper(cfg: DictConfig) -> R:
            try:
                return task(cfg)
            except Exception as err:
                message = explain(err, cfg, settings)
                if message is None:
                    raise
                raise PipelineExit(f"Error: {message}") from err

        return wrapper

    return decorate


class CheckOutputs(Callback):
    """Hydra callback: the run (or sweep) folder can be written, checked before Hydra creates it.

    Args:
        key: the setting that chooses the folder, named in the error (``paths.output_root``, ``predict_dir``).
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def _check(self, config: DictConfig, node: str) -> None:
        try:
            folder = OmegaConf.select(config, node)
        except Exception:  # unresolvable here: Hydra reports it itself
            return
        if not folder:
            return
        try:
            check_writable_dir(str(folder), self.key)
        except OutputError as err:
            # Hydra turns exceptions raised in callbacks into warnings; SystemExit ends the command.
            sys.exit(f"Error: {err}")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
