"""The command lines' config plumbing: schemas and resolvers, and DictConfig → typed dataclasses.

Nothing below the command-line layer sees a DictConfig: each ``main`` calls :func:`to_dataclass`
(and Hydra's ``instantiate`` for ``_target_`` nodes) and hands plain, typed objects to the library.
Every config group with settings of our own has one schema, a dataclass named ``<Group>Spec`` in its
stage's torch-free ``spec`` module, stored here as ``<group>/base_<group>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipeline.cli.sweep import register_resolvers
from pipeline.core.errors import ConfigError
from pipeline.core.io import safe_name
from pipeline.core.tracking import LoggerSpec
from pipeline.data.spec import DataSpec
from pipeline.member.teacher import TeacherSpec
from pipeline.models.spec import ModelSpec
from pipeline.predict.spec import EnsembleSpec, TTASpec

__all__ = ["SCHEMAS", "register", "to_dataclass", "to_container", "fold_tag", "metric_name"]

T = TypeVar("T")

SCHEMAS: dict[str, type] = {"data": DataSpec, "model": ModelSpec, "logger": LoggerSpec, "tta": TTASpec,
                            "ensemble": EnsembleSpec, "teacher": TeacherSpec}
"""Config group → its schema, stored as ``<group>/base_<group>``."""

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
    register_resolvers()
    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name=f"base_{group}", node=schema)
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


def metric_name(node: Any, key: str = "metric") -> str | None:
    """``metric:`` as the library takes it: None (chosen from the submission format), a metric name, or a
    user's function given as ``{_target_: mypkg.fn, greater_is_better: true}``, which is imported here and
    registered (:func:`pipeline.core.metrics.register_custom_metric`) under its ``_target_``.

    Raises:
        ConfigError: naming ``key``: a node without ``_target_`` or ``greater_is_better``, unknown keys, or a
            ``_target_`` that cannot be imported.
    """
    from hydra.utils import get_method

    from pipeline.core.metrics import register_custom_metric

    data = to_container(node)
    if data is None or isinstance(data, str):
        return data
    form = "{_target_: mypkg.fn, greater_is_better: true}"
    if not isinstance(data, dict) or not isinstance(data.get("_target_"), str) or set(data) - {"_target_",
                                                                                                "greater_is_better"}:
        raise ConfigError(f"{key}={data!r}: give a metric name or a function as {form} (fn(labels, probs) -> float).")
    if not isinstance(data.get("greater_is_better"), bool):
        raise ConfigError(f"{key}._target_={data['_target_']}: set {key}.greater_is_better to true or false "
                          f"(the metric's direction), as in {form}.")
    try:
        fn = get_method(data["_target_"])
    except Exception as err:  # Hydra wraps the ImportError/AttributeError
        raise ConfigError(f"{key}._target_={data['_target_']} cannot be imported: {err}") from err
    try:
        return register_custom_metric(data["_target_"], fn, data["greater_is_better"]).name
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from err
