"""The one model factory: timm models, the classic networks, local weight files, input-size checks.

Every model in the project is built by :func:`create_model`, which accepts any timm name plus the
classic networks of :mod:`pipeline.models.classic` (registered on import). Local weights go through
timm's own pretrained loader, so timm adapts the classifier to ``num_classes`` and the first
convolution to ``in_chans`` exactly as it does for hub weights:

    >>> model = create_model("resnet18", 10, in_chans=1, weights="r18.safetensors")  # doctest: +SKIP
    >>> check_input_size(model, in_chans=1, size=32)  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from timm.models import clean_state_dict, get_model_traits, get_pretrained_cfg, is_model, split_model_name_tag
from torch import nn

import pipeline.models.classic  # noqa: F401  (registers lenet5, alexnet, nin with timm)
from pipeline.core.errors import ConfigError, pickle_refusal
from pipeline.data.augment import match_channels

__all__ = [
    "MIN_INPUT_SIZE",
    "WEIGHT_SUFFIXES",
    "create_model",
    "check_input_size",
    "load_weights_file",
    "min_input_size",
    "model_data_config",
    "sized_kwargs",
    "strip_model_prefix",
    "suggest_model_names",
]

log = logging.getLogger(__name__)


class WeightsFileNotFound(ConfigError, FileNotFoundError):
    """``model.weights`` names a file that does not exist (a config error that is also a ``FileNotFoundError``)."""


WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# Smallest square input whose forward pass works, measured with pipeline.models.factory.check_input_size.
# Keys are fnmatch patterns on the architecture name (without a pretrained tag). Models not listed
# either work down to 1×1 (ResNets, MobileNets, EfficientNets) or were not measured.
MIN_INPUT_SIZE: dict[str, int] = {
    "inception_v3": 75,
    "alexnet": 63,
    "vgg*": 32,
    "convnext*": 32,  # 4x4/4 stem, then three 2x2/2 downsamplings
    "lenet5": 16,
    "nin": 4,
}

_SHOWN_KEYS = 10


def suggest_model_names(name: str, limit: int = 8) -> list[str]:
    """Registered timm names closest to ``name``: fuzzy matches first, then substring matches.

    >>> suggest_model_names("resnet181")[0]
    'resnet18'
    """
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    # Substring matches catch truncations ("efficientnet") that fuzzy ratios score too low.
    contained = [m for m in names if name in m or (len(m) >= 4 and m in name)]
    contained.sort(key=lambda m: (abs(len(m) - len(name)), m))
    return list(dict.fromkeys([*close, *contained]))[:limit]


def _check_model_name(name: str) -> None:
    """Raise ``ValueError`` with suggestions when ``name`` is not a registered architecture."""
    if ":" in name:  # hf-hub:/local-dir: sources are resolved by timm itself
        return
    arch, _ = split_model_name_tag(name)
    if not is_model(arch):
        closest = ", ".join(suggest_model_names(arch)) or "none"
        raise ConfigError(f"Unknown timm model {name!r}. Closest: {closest}. Set model.name to one of them.")


def min_input_size(name: str) -> int | None:
    """Smallest known square input for architecture ``name`` (tag ignored), or ``None``."""
    arch, _ = split_model_name_tag(name)
    for pattern, size in MIN_INPUT_SIZE.items():
        if fnmatch.fnmatchcase(arch, pattern):
            return size
    return None


def sized_kwargs(name: str, size: int, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``kwargs`` plus ``img_size=size`` when architecture ``name`` has a fixed input size (ViT, DeiT, Swin...).

    Such models are built for one input size (224 for ``vit_tiny_patch16_224``) and refuse any other, so a
    member trained on ``size``×``size`` crops builds them at that size (timm resamples the position
    embeddings of pretrained weights). Other models, and an ``img_size`` given explicitly, are left alone.

    >>> sized_kwargs("vit_tiny_patch16_224", 32)
    {'img_size': 32}
    >>> sized_kwargs("resnet18", 32)
    {}
    """
    kwargs = dict(kwargs or {})
    if "img_size" in kwargs or ":" in name:
        return kwargs
    cfg = get_pretrained_cfg(split_model_name_tag(name)[0])
    if cfg is not None and cfg.fixed_input_size and tuple(cfg.input_size[-2:]) != (size, size):
        kwargs["img_size"] = int(size)
    return kwargs


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm model, optionally initialised from a local weights file.

    Args:
        name: timm model name, a classic network (``lenet5``, ``alexnet``, ``nin``), or any name
            ``timm.create_model`` accepts (``resnet18.a1_in1k``, ``hf-hub:...``).
        num_classes: Output classes; a file's classifier is dropped when its size differs.
        in_chans: Input channels; a file's first convolution is adapted by timm's rule.
        pretrained: Load timm's default weights from its usual source (the hub). Ignored when
            ``weights`` is given.
        weights: Local ``.safetensors``/``.pth``/``.pt``/``.bin``/``.ckpt`` file. Plain state
            dicts, ``state_dict``/``model`` wrappers and Lightning checkpoints whose module holds
            the network as ``self.model`` are accepted.
        **kwargs: Passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ``lrn``...).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown name, unreadable file, or a file that does not fit the architecture.
        FileNotFoundError: ``weights`` does not exist.
    """
    _check_model_name(name)
    if weights is not None:
        if pretrained:
            log.info("weights=%s takes precedence over pretrained=True", weights)
        return _create_from_file(name, Path(weights), num_classes, in_chans, kwargs)
    # debug: the caller logs the instantiation once (training builds the network twice, a probe and the module)
    log.debug(
        "Instantiating model <timm.create_model> %s (pretrained=%s, num_classes=%d, in_chans=%d)",
        name, pretrained, num_classes, in_chans,
    )  # fmt: skip
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as err:  # an architecture without an input-size argument
        if "img_size" not in kwargs or "img_size" not in str(err):
            raise
        raise ConfigError(f"timm model {name!r} cannot be built for {kwargs['img_size']}×{kwargs['img_size']} inputs "
                          f"(it takes no img_size): pick another model or data.crop_size.") from err


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local weights file into a flat state dict, never executing pickled code.

    Uses timm's ``load_state_dict`` (``weights_only=True`` for torch files; it unwraps
    ``state_dict``/``model``/EMA entries and DDP/compile prefixes), then keeps only the
    ``model.``-prefixed entries, with the prefix removed, when there are any: that is how a
    LightningModule holding the network as ``self.model`` saves it, next to loss buffers and such.

    Raises:
        FileNotFoundError: The file does not exist (the message lists the accepted suffixes).
        ValueError: Unsupported suffix, unreadable file, or content that is not a state dict.
    """
    path = Path(path).expanduser()
    accepted = ", ".join(WEIGHT_SUFFIXES)
    if not path.is_file():
        raise WeightsFileNotFound(f"Weights file not found: {path} (model.weights; accepted suffixes: {accepted})")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"Unsupported weights file {path} (model.weights): suffix {path.suffix!r}, accepted: {accepted}")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        if not isinstance(err, pickle.UnpicklingError) and not isinstance(err.__cause__, pickle.UnpicklingError):
            raise ConfigError(f"Could not read weights file {path} (model.weights): {err}") from err
        # `from None`: torch's and timm's messages advise weights_only=False, which would run the file's code.
        raise ConfigError(pickle_refusal(path, err, "Save the weights as a plain state_dict or safetensors file "
                                                    "(model.weights).")) from None
    except (OSError, EOFError, ValueError, SafetensorError) as err:
        raise ConfigError(f"Could not read weights file {path} (model.weights): {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        top = list(state)[:_SHOWN_KEYS] if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"Weights file {path} (model.weights) does not hold a state dict of tensors (found: {top})")
    prefixed = strip_model_prefix(state, only_prefixed=True)
    if prefixed:
        dropped = len(state) - len(prefixed)
        if dropped:
            log.info("%s: using the %d 'model.' entries, ignoring %d others", path, len(prefixed), dropped)
        state = clean_state_dict(prefixed)
    return state


def strip_model_prefix(state: dict[str, Any], only_prefixed: bool = False) -> dict[str, Any]:
    """The checkpoint-key rule: a LightningModule holds the network as ``self.model``, so its keys start
    with ``model.``; strip that prefix. With ``only_prefixed``, entries without it (loss buffers, metric
    states) are dropped; otherwise they are kept as they are.
    """
    if only_prefixed:
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return {k.removeprefix("model."): v for k, v in state.items()}


def _first(names: str | Sequence[str] | None) -> str | None:
    """First entry of a timm cfg field that may be one name or a tuple of names."""
    if names is None or isinstance(names, str):
        return names
    return names[0] if names else None


def _file_overlay(name: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Pretrained-cfg overlay describing the file, so timm adapts only what actually differs.

    timm compares the requested ``num_classes``/``in_chans`` with the cfg's, not with the file;
    recording the file's head size and input channels keeps a 10-class checkpoint's head when
    10 classes are requested, and lets a 1-channel checkpoint be expanded to 3 channels.
    """
    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(split_model_name_tag(name)[0])
    # state_dict is timm's highest-priority source; clearing `source` rules out the hub.
    overlay: dict[str, Any] = {"state_dict": state, "source": None}
    if cfg is None:
        return overlay
    head = state.get(f"{_first(cfg.classifier)}.weight")
    overlay["num_classes"] = int(head.shape[0]) if head is not None else 0
    stem = state.get(f"{_first(cfg.first_conv)}.weight")
    if stem is not None and stem.ndim == 4:
        overlay["input_size"] = (int(stem.shape[1]), *cfg.input_size[1:])
    return overlay


def _create_from_file(
    name: str, path: Path, num_classes: int, in_chans: int, kwargs: dict[str, Any]
) -> nn.Module:
    """Create ``name`` through timm's pretrained loader with ``path`` as the weight source."""
    state = load_weights_file(path)
    overlay = _file_overlay(name, state)
    head_replaced = overlay.get("num_classes") != num_classes
    log.info(
        "Instantiating model <timm.create_model> %s from %s (num_classes=%d, in_chans=%d)",
        name, path, num_classes, in_chans,
    )  # fmt: skip
    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay,
            num_classes=num_classes, in_chans=in_chans, **kwargs,
        )  # fmt: skip
    except RuntimeError as err:  # strict load: missing/unexpected keys or shape mismatches
        reference = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
        report = _mismatch_report(state, reference, head_replaced)
        raise ConfigError(_mismatch_message(path, name, num_classes, in_chans, report, err)) from err
    # timm loads non-strictly whenever it drops the head, so a file with the wrong key names would
    # silently leave a random backbone; compare the key sets ourselves.
    report = _mismatch_report(state, model, head_replaced)
    if report:
        raise ConfigError(_mismatch_message(path, name, num_classes, in_chans, report, None))
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
    cfg.pop("state_dict", None)  # timm keeps a deep copy of the source tensors there
    cfg["file"] = str(path)
    return model


def _mismatch_report(state: dict[str, torch.Tensor], model: nn.Module, head_replaced: bool) -> list[str]:
    """Lines describing keys and shapes that differ between ``state`` and ``model``."""
    cfg = getattr(model, "pretrained_cfg", {})
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    skipped = {f"{h}.{p}" for h in heads for p in ("weight", "bias")} if head_replaced else set()
    stem = f"{_first(get_model_traits(model).get('first_conv') or cfg.get('first_conv'))}.weight"
    expected = {k: v for k, v in model.state_dict().items() if k not in skipped}
    given = {k: v for k, v in state.items() if k not in skipped}
    missing = [k for k in expected if k not in given]
    unexpected = sorted(k for k in given if k not in expected)  # safetensors stores keys in no useful order
    shapes = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        # timm adapts the stem's input channels itself; any other difference is a real mismatch.
        if k in given and given[k].shape != v.shape and not (k == stem and given[k].shape[0] == v.shape[0])
    ]
    lines = []
    for label, items in (("missing from the file", missing), ("unexpected in the file", unexpected),
                         ("shape mismatches", shapes)):  # fmt: skip
        if items:
            more = f", ... (+{len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else ""
            lines.append(f"  {len(items)} {label}: {', '.join(items[:_SHOWN_KEYS])}{more}")
    return lines


def _mismatch_message(
    path: Path, name: str, num_classes: int, in_chans: int, report: list[str], err: Exception | None
) -> str:
    """The error text for a weights file that does not fit the requested architecture."""
    detail = "\n".join(report) if report else f"  timm: {err}"
    return (
        f"Weights file {path} does not fit timm model {name!r} "
        f"(num_classes={num_classes}, in_chans={in_chans}):\n{detail}\n"
        "Check that the model name matches the architecture the file was saved from."
    )


def _model_name(model: nn.Module) -> str:
    """Architecture name of a timm model, falling back to its class name."""
    return str(getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__)


def check_input_size(model: nn.Module | str, in_chans: int = 3, size: int = 224, **kwargs: Any) -> None:
    """Fail early, with a clear message, if ``model`` cannot process ``size``×``size`` inputs.

    Runs one forward pass at batch 1 in eval mode without gradients (BatchNorm statistics are
    untouched), on the model's own device, then restores every module's train/eval mode.

    Args:
        model: A built model, or a name to build with :func:`create_model` (``**kwargs`` too).
        in_chans: Input channels the data will have.
        size: Square input size the data will have.

    Raises:
        ValueError: The forward pass fails; the message gives the known minimum when there is one.
    """
    net = create_model(model, num_classes=2, in_chans=in_chans, **kwargs) if isinstance(model, str) else model
    name = model if isinstance(model, str) else _model_name(model)
    expected_chans = get_model_traits(net).get("in_chans")
    if expected_chans is not None and expected_chans != in_chans:
        raise ConfigError(f"Model {name!r} was built for in_chans={expected_chans}; the data has {in_chans}")
    param = next(net.parameters(), None)
    x = torch.zeros(1, in_chans, size, size, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)  # fmt: skip
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    except (RuntimeError, ValueError, AssertionError) as err:  # timm asserts the size of fixed-size models
        raise ConfigError(_size_message(name, in_chans, size, err)) from err
    finally:
        for module, training in modes.items():
            module.training = training


def _size_message(name: str, in_chans: int, size: int, err: Exception) -> str:
    """Explain a failed size check, naming the known minimum when there is one."""
    minimum = min_input_size(name)
    why = " ".join(str(err).split()) or type(err).__name__  # one line: torch's messages span several
    if isinstance(err, AssertionError):  # a fixed-size model built for another size (an explicit img_size)
        return (f"Model {name!r} cannot take {size}×{size} inputs (in_chans={in_chans}): {why} Leave "
                "model.kwargs.img_size unset (it follows data.crop_size), or pick another model or crop size.")
    if minimum is not None and size >= minimum:
        return (
            f"Forward pass of {name!r} failed at {size}×{size} (in_chans={in_chans}), although sizes "
            f"from {minimum}×{minimum} normally work: {why}"
        )
    hint = (
        f"it needs at least {minimum}×{minimum}"
        if minimum is not None
        else "no minimum is recorded in pipeline.models.MIN_INPUT_SIZE; try a larger size"
    )
    return (
        f"Input size {size}×{size} is too small for {name!r} (in_chans={in_chans}): {hint}. "
        f"Raise the image size or pick another model. Forward pass error: {why}"
    )


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """``timm.data.resolve_model_data_config`` with channels matched to the model's ``in_chans``.

    timm reports the source weights' input size and RGB statistics even for a 1-channel model;
    here ``input_size[0]``, ``mean`` and ``std`` follow the model's channel count.

    Returns:
        Dict with ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct``
        and ``crop_mode``.
    """
    config = dict(timm.data.resolve_model_data_config(model))
    in_chans = get_model_traits(model).get("in_chans") or config["input_size"][0]
    config["input_size"] = (in_chans, *config["input_size"][1:])
    config["mean"] = tuple(match_channels(config["mean"], in_chans, "the model's mean"))
    config["std"] = tuple(match_channels(config["std"], in_chans, "the model's std"))
    return config
