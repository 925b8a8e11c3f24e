"""One validation pass over the composed config, before anything runs or any folder is created.

:class:`ValidateConfig` is a Hydra callback (``hydra.callbacks.validate`` in train/predict/report.yaml): it
sees the composed config before Hydra creates the run or sweep folder, so a refused config writes
nothing. Each job checks its own values again (:func:`validate`), since a sweep's base config does not
hold the swept values. The checks:

- keys: every top-level key is one the commands know, even one added with ``+`` (``+ensembel=auto``); a
  ``trainer`` key must be a ``pytorch_lightning.Trainer`` argument, an ``optimizer``/``scheduler`` key an
  argument of its ``_target_``; ``model.kwargs``, ``callbacks``, ``aug``, ``paths`` and ``hydra`` stay open.
- values: ``optimizer.lr``, ``trainer.max_epochs`` (``-1``: no epoch limit, said in one line), ``seed``,
  ``data.image_size``/``crop_size``, the task keys ``data.task``/``label_cols``/``tag_sep``/``target_range``,
  ``tta.flip``/``flips``, ``member_chunk_size``, ``ensemble.given_weights``, ``budget.seconds``/``per_1000``
  (positive, one of them).
- optional extras: ``launcher=ray|slurm|submitit_local``, ``distribute=...`` and ``hparams_search=optuna``
  need packages that ``pip install 'pipeline[<extra>]'`` brings, and SLURM needs ``srun`` on PATH.

Each refusal is one :class:`~pipeline.core.errors.ConfigError` line naming the key, the value and what
is accepted.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import logging
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import CONF_DIR
from pipeline.core.errors import ConfigError

__all__ = ["ValidateConfig", "validate", "known_top_level_keys", "check_extras", "check_extras_or_exit", "NO_EPOCH_LIMIT"]

log = logging.getLogger(__name__)

_ABSENT: Any = object()
Getter = Callable[[str], Any]

NO_EPOCH_LIMIT = -1
"""``trainer.max_epochs=-1``: train until stopped (early stopping, ``trainer.max_steps`` or ``max_time``)."""

# Nodes whose keys are not ours to check: timm's model arguments, callback and augmentation nodes
# (each a _target_ of its own), paths users add for their own interpolations, and Hydra's node.
_OPEN = ("model", "callbacks", "aug", "paths", "hydra")
# Config group → option → (modules it imports, the extra that installs them).
_EXTRAS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "launcher": {"ray": (("ray", "hydra_plugins.hydra_ray_launcher"), "ray"),
                 "slurm": (("submitit", "hydra_plugins.hydra_submitit_launcher"), "slurm"),
                 "submitit_local": (("submitit", "hydra_plugins.hydra_submitit_launcher"), "slurm")},
    "distribute": {"ray": (("ray",), "ray"), "slurm": (("submitit",), "slurm"),
                   "submitit_local": (("submitit",), "slurm")},
    "hparams_search": {"optuna": (("optuna", "hydra_plugins.hydra_optuna_sweeper"), "optuna")},
}
_NEEDS_SRUN = {("launcher", "slurm"), ("distribute", "slurm")}


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or blocked
        return True


def _check_choice_extras(group: str, option: str) -> None:
    """The extra a group option needs is installed (and SLURM's ``srun`` is on PATH)."""
    needed = _EXTRAS.get(group, {}).get(option)
    if needed is None:
        return
    modules, extra = needed
    if absent := [m for m in modules if _missing(m)]:
        raise ConfigError(f"{group}={option} needs {', '.join(absent)}, which is not installed: "
                          f"pip install 'pipeline[{extra}]' (or choose another {group}).")
    if (group, option) in _NEEDS_SRUN and shutil.which("srun") is None:
        other = "launcher=submitit_local" if group == "launcher" else "distribute=submitit_local"
        raise ConfigError(f"{group}={option}: `srun` is not on PATH, so this is no SLURM machine. Run it on a SLURM "
                          f"login node, or use {other} to run the same path on this machine.")


def check_extras(argv: Sequence[str]) -> None:
    """Command-line group choices whose optional packages are missing, before Hydra composes anything.

    Without the plugin Hydra itself would fail with "Could not find 'hydra/launcher/ray'".
    """
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and "," not in value:
            _check_choice_extras(key, value)


def check_extras_or_exit(argv: Sequence[str]) -> None:
    """:func:`check_extras`, ending the command with its one-line message (called before Hydra starts)."""
    try:
        check_extras(argv)
    except ConfigError as err:
        sys.exit(f"Error: {err}")


@functools.cache
def known_top_level_keys() -> frozenset[str]:
    """The top-level keys of train, predict and report.yaml, of the shipped ``@package _global_`` files
    (experiments, launchers, searches), and the config groups (an experiment serves all three commands)."""
    keys = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} | {"hydra"}
    files = [CONF_DIR / f"{name}.yaml" for name in ("train", "predict", "report")]
    files += [f for f in sorted(CONF_DIR.glob("*/*.yaml")) if "@package _global_" in f.read_text()]
    for file in files:
        node = OmegaConf.load(file)
        keys |= {str(k) for k in node if k != "defaults"}  # type: ignore[union-attr]
    return frozenset(keys)


def _unknown(where: str, key: str, known: Iterable[str], accepted: str) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" Did you mean {where}{close[0]}?" if close else ""
    return ConfigError(f"Unknown config key {where}{key} (a key added with + is checked too).{hint} Accepted: {accepted}.")


@functools.cache
def _arguments(target: str) -> frozenset[str] | None:
    """The keyword arguments ``target`` takes, or None when it takes any (``**kwargs``) or cannot be imported."""
    from hydra.utils import get_object

    try:
        params = inspect.signature(get_object(target)).parameters.values()
    except Exception:  # not importable here: instantiating it will say why
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.name != "self")


def _check_target_keys(cfg: DictConfig, group: str) -> None:
    node = cfg.get(group)
    if not isinstance(node, DictConfig) or not isinstance(target := node.get("_target_"), str):
        return
    arguments = _arguments(target)
    if arguments is None:
        return
    for key in node:
        if not str(key).startswith("_") and key not in arguments:
            raise _unknown(f"{group}.", str(key), arguments, f"the arguments of {target}")


def _command_line_keys(cfg: DictConfig) -> set[str] | None:
    """Top-level keys the command line adds with ``+`` (``+ensembel=auto`` → ``ensembel``); None: not known."""
    from hydra.core.hydra_config import HydraConfig

    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if task is None and HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    if task is None:
        return None
    # Only keys added with + (or ++): a plain override of a key no file declares fails in Hydra itself.
    return {str(o).split("=", 1)[0].lstrip("+").split(".", 1)[0] for o in task if str(o).startswith("+")}


def check_keys(cfg: DictConfig, command: str) -> None:
    """Unknown top-level keys, and keys the ``_target_`` of ``trainer``/``optimizer``/``scheduler`` does not take.

    A top-level key of the user's own that a config file declares (an experiment's ``weights_dir``, used in
    its interpolations) is theirs to add; one that comes from the command line is a typo until a config
    file declares it (when the command line's overrides are unknown, every unknown key is refused).
    """
    known = known_top_level_keys()
    typed = _command_line_keys(cfg)
    for key in cfg:
        if key not in known and (typed is None or key in typed):
            raise _unknown("", str(key), known, f"the keys of {command}.yaml and the config groups "
                           f"(pipeline-{command} --cfg job lists them)")
    if command == "train":
        for group in ("trainer", "optimizer", "scheduler"):
            _check_target_keys(cfg, group)


def _number(key: str, value: Any, accepted: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{key}={value!r} is not a number; accepted: {accepted}.")
    return float(value)


def _integer(key: str, value: Any, accepted: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not an integer; accepted: {accepted}.")
    return value


def _check_training(get: Getter) -> None:
    if (lr := get("optimizer.lr")) is not _ABSENT:
        if not 0 < _number("optimizer.lr", lr, "a positive number such as 1e-3") < math.inf:
            raise ConfigError(f"optimizer.lr={lr!r}: the learning rate must be a positive number such as 1e-3.")
    if (epochs := get("trainer.max_epochs")) is not _ABSENT:
        accepted = f"an integer ≥ 1, or {NO_EPOCH_LIMIT} for no epoch limit"
        if _integer("trainer.max_epochs", epochs, accepted) < 1 and epochs != NO_EPOCH_LIMIT:
            raise ConfigError(f"trainer.max_epochs={epochs}; accepted: {accepted}.")
        if epochs == NO_EPOCH_LIMIT and get("scheduler.T_max") == NO_EPOCH_LIMIT:
            raise ConfigError(f"trainer.max_epochs={NO_EPOCH_LIMIT} (no epoch limit) but scheduler.T_max follows it: "
                              "set scheduler.T_max to a number of epochs, or scheduler=none.")
    image, crop = get("data.image_size"), get("data.crop_size")
    if image is not _ABSENT and crop is not _ABSENT:
        image = _integer("data.image_size", image, "a positive integer")
        crop = _integer("data.crop_size", crop, "a positive integer")
        if crop < 1 or image < crop:
            raise ConfigError(f"data.image_size={image}, data.crop_size={crop}: images are resized to image_size, "
                              "then cropped, so 1 ≤ data.crop_size ≤ data.image_size.")


def _check_task_keys(get: Getter) -> None:
    """``data.task`` a known task, ``data.target_range`` [low, high], ``label_cols`` names, ``tag_sep`` not empty."""
    from pipeline.core.task import TASKS

    if (task := get("data.task")) is not _ABSENT and task not in ("auto", *TASKS):
        raise ConfigError(f"data.task={task!r}; accepted: auto | {' | '.join(TASKS)}.")
    if (rng := get("data.target_range")) not in (None, _ABSENT):
        form = "[low, high], two numbers with low < high, e.g. data.target_range=[0,4]"
        if not isinstance(rng, list) or len(rng) != 2:
            raise ConfigError(f"data.target_range={rng!r}; accepted: {form}.")
        low, high = (_number("data.target_range", v, form) for v in rng)
        if not -math.inf < low < high < math.inf:
            raise ConfigError(f"data.target_range={rng!r}; accepted: {form}.")
    cols, sep = get("data.label_cols"), get("data.tag_sep")
    if cols not in (None, _ABSENT) and (not isinstance(cols, list) or not cols or len(set(cols)) != len(cols)):
        raise ConfigError(f"data.label_cols={cols!r}; accepted: a list of distinct train.csv column names, one 0/1 "
                          "column per label (or null).")
    if sep not in (None, _ABSENT) and (not isinstance(sep, str) or not sep):
        raise ConfigError(f"data.tag_sep={sep!r}; accepted: the separator of the tags in data.label_col (' ' for "
                          "'haze primary'), or null.")
    if cols not in (None, _ABSENT) and sep not in (None, _ABSENT):
        raise ConfigError("data.label_cols and data.tag_sep are both set: a multi-label train.csv holds either one 0/1 "
                          "column per label (data.label_cols) or one column of tags (data.tag_sep); set one of them.")


def _check_prediction(get: Getter) -> None:
    from pipeline.predict.tta import FLIPS  # torch is only imported once a command runs

    if (flip := get("tta.flip")) is not _ABSENT and flip not in FLIPS:
        raise ConfigError(f"tta.flip={flip!r}; accepted: {' | '.join(FLIPS)}.")
    flips = get("tta.flips")
    if bad := [f for f in (flips if isinstance(flips, list) else []) if f not in FLIPS]:
        raise ConfigError(f"tta.flips has {bad}; each entry is one of {' | '.join(FLIPS)}.")
    if (checkpoint := get("checkpoint")) is not _ABSENT and checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint={checkpoint!r}; accepted: best | last (the weights every member predicts with).")
    chunks = get("member_chunk_size")
    if chunks not in (None, _ABSENT) and not isinstance(chunks, Mapping):
        raise ConfigError(f"member_chunk_size={chunks!r}: give a mapping of member or model name to a chunk size, "
                          "e.g. member_chunk_size='{resnet50-s0: 256}' (or null).")
    if get("ensemble.weights") == "given" and (given := get("ensemble.given_weights")) not in (None, _ABSENT):
        _check_given_weights(given)
    budget = get("budget")
    if isinstance(budget, Mapping):
        from pipeline.predict.spec import check_budget

        check_budget(budget.get("seconds"), budget.get("per_1000"), budget.get("probe_images", 32))


def _check_given_weights(given: Any) -> None:
    form = "one non-negative number per member, not all zero, e.g. ensemble.given_weights=[2,1,1]"
    if not isinstance(given, list):
        raise ConfigError(f"ensemble.given_weights={given!r}; accepted: {form}.")
    numbers = [_number("ensemble.given_weights", w, form) for w in given]
    if any(w < 0 or w == math.inf for w in numbers) or not any(numbers):
        raise ConfigError(f"ensemble.given_weights={given}; accepted: {form}.")


def validate(cfg: DictConfig, command: str) -> None:
    """Check ``cfg`` (as ``pipeline-<command>`` composed it) in one pass; raises the first problem found.

    Raises:
        ConfigError: naming the key, its value and what is accepted.
    """
    check_keys(cfg, command)
    get = functools.partial(_value, cfg)
    if (seed := get("seed")) not in (None, _ABSENT):
        _integer("seed", seed, "an integer such as 0")
    _check_task_keys(get)
    if command == "train":
        _check_training(get)
    if command == "predict":
        _check_prediction(get)
        distribute = cfg.get("distribute")
        if isinstance(distribute, DictConfig):
            _check_choice_extras("distribute", str(distribute.get("backend")))


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` as plain Python; :data:`_ABSENT` when missing or not resolvable yet."""
    try:
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except Exception:  # ${hydra:...} before the job starts: the job checks it again
        return _ABSENT


class ValidateConfig(Callback):
    """Hydra callback: :func:`validate` the composed config before Hydra creates the run or sweep folder.

    Args:
        command: ``train``, ``predict`` or ``report``.
    """

    def __init__(self, command: str) -> None:
        self.command = command

    def _check(self, config: DictConfig) -> None:
        try:
            validate(config, self.command)
        except ConfigError as err:
            # Hydra turns exceptions raised in callbacks into warnings; SystemExit ends the command.
            sys.exit(f"Error: {err}")
        if self.command == "train" and OmegaConf.select(config, "trainer.max_epochs") == NO_EPOCH_LIMIT:
            print(f"trainer.max_epochs={NO_EPOCH_LIMIT}: no epoch limit; training runs until early stopping, "
                  "trainer.max_steps or trainer.max_time stops it.", file=sys.stderr)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
