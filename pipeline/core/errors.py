"""The project's error types and the helpers that keep their messages short and specific.

Every error a user can fix derives from :class:`PipelineError`; the command lines print its message
without a traceback (``HYDRA_FULL_ERROR=1`` shows it). Each subclass also derives from ``ValueError``,
so callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MISSING", "PipelineError", "ConfigError", "DataError", "MemberError", "TrainError", "OutputError", "examples",
    "duplicates", "id_differences", "pickle_refusal",
]

_N_EXAMPLES = 5

MISSING: Any = "???"
"""A mandatory setting's placeholder in the spec dataclasses (``omegaconf.MISSING``, without importing it)."""


class PipelineError(ValueError):
    """A problem the user can fix; the message names the file, column, key or value, and what is accepted.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``type(err)(text)`` where
    ``text`` is the worker's whole traceback; the message is then the original one again, so command
    lines and ``error.txt`` show what the user must fix, not a page of worker frames.
    """

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught "):
            args = (_unwrap_worker_text(type(self), args[0]),)
        super().__init__(*args)


class ConfigError(PipelineError):
    """A setting that is missing, unknown or contradicts another; the message names the config key."""


class DataError(PipelineError):
    """Bad competition data; the message names the file, column or key to fix."""


class MemberError(PipelineError):
    """A member folder that cannot be used; the message names the folder and the missing piece."""


class TrainError(PipelineError):
    """Training that cannot give a usable member (no optimiser step, no validation, a diverged loss)."""


class OutputError(PipelineError):
    """A file or folder the pipeline must write but cannot (permissions, read-only disk); names the path.

    ``path`` is the folder or file that could not be written, so a command line can add the config key
    that chose it.
    """

    def __init__(self, message: str, path: Any = None) -> None:
        super().__init__(message)
        self.path = path


def _unwrap_worker_text(cls: type, text: str) -> str:
    """The original message inside torch's "Caught X in DataLoader worker process N. Original Traceback..." text."""
    if "\nOriginal Traceback" not in text:
        return text
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if at >= 0 else text


def examples(items: Sequence[Any], n: int = _N_EXAMPLES) -> str:
    """The first few items, for error messages that stay short on 100k-row files."""
    shown = ", ".join(repr(i) for i in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


def duplicates(ids: Sequence[str]) -> list[str]:
    """Values that occur more than once, each listed once, in first-repeat order."""
    seen: set[str] = set()
    out: dict[str, None] = {}
    for i in ids:
        if i in seen:
            out[i] = None
        seen.add(i)
    return list(out)


def id_differences(expected: Sequence[str], got: Sequence[str]) -> tuple[list[str], list[str]]:
    """Ids in ``expected`` but not ``got`` and ids in ``got`` but not ``expected``, in input order."""
    expected_set, got_set = set(expected), set(got)
    return [i for i in expected if i not in got_set], [i for i in got if i not in expected_set]


# What torch's weights-only unpickler (or timm's wrapper of it) names when it refuses a file:
# "Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y", "Unsupported globals: x.y" (code the file
# references) or "Unsupported operand N" (bytes that are no pickle of tensors at all).
_GLOBAL = re.compile(r"(?:Unsupported globals?: (?:GLOBAL )?|unsupported GLOBAL )([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand (\d+)")


def pickle_refusal(path: str | Path, err: BaseException, fix: str = "") -> str:
    """The one wording for a checkpoint that does not load with ``weights_only=True`` (resume, weights, fine-tuning).

    torch's own message advises retrying with ``weights_only=False``, which would run whatever the file
    holds; this message names what the file references (or that it is no checkpoint) and says not to.
    """
    text = f"{err}\n{err.__cause__ or ''}"
    tail = f"do not switch weights_only off to get past this.{f' {fix}' if fix else ''}"
    if (found := _GLOBAL.search(text)) is not None:
        return (
            f"Refusing to load {path}: it references {found.group(1)}, and unpickling it could run arbitrary code. "
            f"Only checkpoints that load with weights_only=True are accepted; {tail}"
        )
    operand = _OPERAND.search(text)
    what = f" (unsupported pickle operand {operand.group(1)})" if operand else ""
    return (
        f"Cannot load {path}: it is not a checkpoint that loads with weights_only=True{what}; it may be corrupt, "
        f"truncated, or not a PyTorch checkpoint at all, and {tail}"
    )
