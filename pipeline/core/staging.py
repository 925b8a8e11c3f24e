"""A folder's results written aside and swapped in only when every one of them succeeded.

A run that writes several files into an output folder (the predict stage: ``oof/``, ``test/``, the
ensemble's file, the submission, ``predict.json``) writes them into ``<folder>/.staging-<host>-<pid>/``
first. Only when all of them are written does :func:`promote` move them into the folder, ``predict.json``
last; a run that fails on the way leaves the previous results whole (and its staging folder, removed by
the next run once its writer is gone). Concurrent runs each have their own staging folder.

>>> stage = staging_dir("outputs/demo/demo/predict")  # doctest: +SKIP
>>> (stage / "predict.json").write_text("{}")  # doctest: +SKIP
>>> promote(stage, "outputs/demo/demo/predict", ["predict.json"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.io import clean_stale_temps

__all__ = ["discard", "promote", "staging_dir"]

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]
_STAGE = re.compile(r"^\.staging-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(folder: str | Path) -> Path:
    """A fresh, empty staging folder inside ``folder`` for this process; stale ones of dead writers are removed.

    So are the temporary files of dead writers anywhere in ``folder`` (a run killed, or one whose disk filled
    up before this version removed them: :func:`pipeline.core.io.clean_stale_temps`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(folder, recursive=True)
    for old in folder.glob(".staging-*"):
        match = _STAGE.match(old.name)
        if match and match["host"] == _HOST and (int(match["pid"]) == os.getpid() or not _alive(int(match["pid"]))):
            shutil.rmtree(old, ignore_errors=True)
    stage = folder / f".staging-{_HOST}-{os.getpid()}"
    stage.mkdir()
    return stage


def discard(folder: str | Path) -> None:
    """Remove this process's staging folder in ``folder`` (a failed run: the previous results stay as they were)."""
    shutil.rmtree(Path(folder) / f".staging-{_HOST}-{os.getpid()}", ignore_errors=True)


def promote(stage: str | Path, folder: str | Path, names: Sequence[str]) -> None:
    """Move ``names`` (files or folders) from ``stage`` into ``folder``, in order, then remove ``stage``.

    A folder replaces the one of the same name whole (so files an earlier run left there go too); a file
    replaces its namesake atomically. Put the record that says the results are complete last.
    """
    stage, folder = Path(stage), Path(folder)
    for name in names:
        new, old = stage / name, folder / name
        if not new.exists():
            continue
        if new.is_dir():
            retired = stage / f".old-{name}"
            if old.exists():
                os.replace(old, retired)
            os.replace(new, old)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(new, old)
    shutil.rmtree(stage, ignore_errors=True)
    log.debug("Promoted %s from %s into %s", list(names), stage, folder)
