"""The CLI layer's config plumbing: OmegaConf resolvers, schema registration, DictConfig → dataclasses.

Nothing below the CLI layer sees a DictConfig: entry points call :func:`to_dataclass` and hand plain,
typed objects to the library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipeline.data import DataSpec
from pipeline.loggers import LoggerSpec
from pipeline.utils import safe_name

__all__ = ["CONF_DIR", "register", "to_dataclass", "config_hash", "fold_tag", "to_container"]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
T = TypeVar("T")
_registered = False


def fold_tag(n_folds: int, fold: int) -> str:
    """``holdout`` for a single validation split, ``f<k>`` for fold k of a K-fold split."""
    return "holdout" if int(n_folds) < 2 else f"f{int(fold)}"


def register() -> None:
    """Register resolvers and structured-config schemas (idempotent)."""
    global _registered
    if _registered:
        return
    OmegaConf.register_new_resolver("safe", lambda s: safe_name(str(s)), replace=True)
    OmegaConf.register_new_resolver("fold_tag", fold_tag, replace=True)
    cs = ConfigStore.instance()
    cs.store(group="data", name="base_data", node=DataSpec)
    cs.store(group="logger", name="base_logger", node=LoggerSpec)
    from pipeline.model_schema import register_model_schema
    from pipeline.schemas import register_configs

    register_configs()
    register_model_schema()
    _registered = True


def to_container(cfg: Any) -> Any:
    """Resolved plain Python container of a config node (or the value itself)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def to_dataclass(cls: type[T], cfg: Any) -> T:
    """Build dataclass ``cls`` from a config node, ignoring keys it does not declare (``_target_``…)."""
    data = to_container(cfg)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def config_hash(cfg: DictConfig, keys: tuple[str, ...]) -> str:
    """Stable short hash of the given top-level config keys (what defines a member's result)."""
    plain = {k: to_container(cfg.get(k)) for k in keys}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
