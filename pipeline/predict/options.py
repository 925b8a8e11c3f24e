"""Checking how the models will run before anything runs: mode, device, precision, batch settings.

:func:`check_options` is called first by every prediction entry point, before any cache is consulted: a
``precision=fp8`` or ``device=cuda`` on a machine without CUDA must fail even when the prediction cache
already holds the result. Device type and precision are part of the cache key
(:func:`pipeline.predict.plan.settings_key`), so a cached result is never reused for another setting.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch

from pipeline.core.errors import ConfigError
from pipeline.core.reduce import REDUCTIONS
from pipeline.member.folder import CHECKPOINTS, Member
from pipeline.predict.spec import MODES, PredictOptions

__all__ = ["PRECISIONS", "DEVICE_TYPES", "check_options", "check_member_chunk_sizes", "autocast"]

PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Accepted ``precision`` values → the autocast dtype (None: float32, no autocast)."""

DEVICE_TYPES = ("cpu", "cuda", "mps")
"""Device types prediction runs on (``device``: ``auto``, a type, or ``cuda:<index>``)."""


def _device(text: str) -> torch.device:
    """The ``torch.device`` for ``device``, checked against what this machine has."""
    accepted = "auto, cpu, cuda, cuda:<index> or mps"
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"device={text!r} is not a device; accepted: {accepted}") from err
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"device={text!r}: prediction does not run on {device.type!r}; accepted: {accepted}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={text!r} but this machine has no usable CUDA device; use device=cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={text!r} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={text!r} but MPS is not available on this machine; use device=cpu or auto")
    return device


@cache
def _autocast_works(device_type: str, precision: str) -> str | None:
    """None when a convolution runs in ``precision`` under autocast on ``device_type``; else why not."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16"
    conv = torch.nn.Conv2d(1, 2, 3).to(device_type)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device_type, dtype=dtype), torch.no_grad():
                out = conv(torch.ones(1, 1, 5, 5, device=device_type))
    except RuntimeError as err:
        return str(err)
    disabled = [str(w.message) for w in caught if "autocast" in str(w.message).lower()]
    if disabled or out.dtype != dtype:
        return "; ".join(disabled) or f"autocast produced {out.dtype}, not {dtype}"
    return None


def check_options(opts: PredictOptions) -> torch.device:
    """Validate every run option and return the device; the errors name the key and the accepted values.

    Raises:
        ConfigError: Unknown mode, precision or reduction, a device this machine lacks, a precision its
            device cannot run, or a non-positive batch or chunk size.
    """
    if opts.mode not in MODES:
        raise ConfigError(f"mode={opts.mode!r} is not one of {list(MODES)}")
    if opts.checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={opts.checkpoint!r} is not one of {list(CHECKPOINTS)}")
    if opts.precision not in PRECISIONS:
        raise ConfigError(f"precision={opts.precision!r} is not one of {list(PRECISIONS)}")
    if opts.view_reduce not in REDUCTIONS:
        raise ConfigError(f"tta.reduce={opts.view_reduce!r} is not one of {list(REDUCTIONS)}")
    flags = {k: getattr(opts, k) for k in ("channels_last", "compile", "test_all_policies")}
    if bad_flags := {k: v for k, v in flags.items() if not isinstance(v, bool)}:
        raise ConfigError(f"{bad_flags}: expected true or false")
    if not isinstance(opts.batch_size, int) or opts.batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {opts.batch_size!r}")
    if not isinstance(opts.num_workers, int) or opts.num_workers < 0:
        raise ConfigError(f"num_workers must be 0 or more; got {opts.num_workers!r}")
    chunks = {"chunk_size": opts.chunk_size, **{f"member_chunk_size.{k}": v for k, v in opts.member_chunk_size.items()}}
    bad = {k: v for k, v in chunks.items() if v is not None and (not isinstance(v, int) or v < 1)}
    if bad:
        raise ConfigError(f"chunk sizes must be positive integers or null; got {bad}")
    if opts.image_cache_size is not None and opts.image_cache_size < 1:
        raise ConfigError(f"data.cache_size must be a positive integer or null; got {opts.image_cache_size}")
    device = _device(str(opts.device))
    why = _autocast_works(device.type, opts.precision)
    if why is not None:
        raise ConfigError(f"precision={opts.precision} cannot run on {device} ({why}); use precision=32")
    return device


def check_member_chunk_sizes(opts: PredictOptions, members: Sequence[Member]) -> None:
    """Every ``member_chunk_size`` key names one of ``members`` or their models (a typo would be ignored).

    Raises:
        ConfigError: naming the unknown key and the member and model names accepted.
    """
    names = {m.name for m in members} | {m.manifest.model_group for m in members if m.manifest.model_group}
    if unknown := sorted(set(opts.member_chunk_size) - names):
        raise ConfigError(f"member_chunk_size names {unknown}, which are neither members nor models of this ensemble; "
                          f"accepted: {sorted(names)}.")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The autocast context of ``precision`` on ``device`` (checked by :func:`check_options`)."""
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
