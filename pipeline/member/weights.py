"""A member's weights: load a checkpoint safely (``weights_only``), export ``model.safetensors`` + ``model.json``.

Every completed member gets ``model.safetensors`` and ``model.json`` in its own folder (training calls
:func:`export_member`). Loading it in a notebook needs only timm (plus ``import pipeline`` for the classic
networks); the file path in ``model.json`` is relative to the member folder::

    meta = json.load(open(folder / "model.json"))
    overlay = {**meta["pretrained_cfg_overlay"], "file": str(folder / meta["pretrained_cfg_overlay"]["file"])}
    model = timm.create_model(meta["model_name"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"],
                              pretrained=True, pretrained_cfg_overlay=overlay, **meta["model_kwargs"])

``pipeline-export`` also writes timm's own ``config.json`` beside the weights, so an exported member loads
with ``timm.create_model("local-dir:/path/to/member", pretrained=True)`` (:mod:`pipeline.member.export`).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from pipeline.core.errors import MemberError, pickle_refusal
from pipeline.core.io import atomic_path, write_json
from pipeline.member.folder import Member
from pipeline.member.manifest import read_manifest
from pipeline.models.factory import create_model, strip_model_prefix

__all__ = ["WEIGHTS", "META", "load_checkpoint", "load_state_dict", "build_model", "model_meta", "export_member"]

WEIGHTS = "model.safetensors"
META = "model.json"


_UNREADABLE = (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError, IndexError, struct.error,
               UnicodeDecodeError)
"""What reading a file that is not a checkpoint (text, truncated, random bytes) raises."""


def load_checkpoint(path: Path, fix: str = "", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and never run pickled code.

    A file holding pickled Python objects is refused; the message says what it references and not to
    switch ``weights_only`` off (torch's own message suggests exactly that).

    Args:
        path: the checkpoint.
        fix: what the user can do instead, appended to the refusal.
        mmap: map tensor data instead of reading it (enough to check the file; needs the zip format).

    Raises:
        MemberError: the file is missing, truncated or corrupt, or holds pickled objects.
    """
    if not path.is_file():
        raise MemberError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # `from None`: torch's message advises retrying with weights_only=False, which is exactly what not to do.
        raise MemberError(pickle_refusal(path, err, fix)) from None
    except _UNREADABLE as err:  # torch.load on text or random bytes raises any of these (KeyError: a text file)
        raise MemberError(f"Cannot read checkpoint {path}: truncated or not a PyTorch checkpoint "
                          f"({type(err).__name__}: {err}).{f' {fix}' if fix else ''}") from err


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's model weights with ``weights_only=True`` and strip Lightning's ``model.`` prefix.

    Raises:
        MemberError: for a missing or unreadable file, or one that holds arbitrary pickled objects
            (refused, never run).
    """
    if path.suffix == ".safetensors":  # exported members: tensors only, nothing to unpickle
        from safetensors.torch import load_file

        if not path.is_file():
            raise MemberError(f"Checkpoint {path} does not exist.")
        try:
            return load_file(str(path))
        except (SafetensorError, *_UNREADABLE) as err:
            raise MemberError(f"Cannot read weights {path}: truncated or not a safetensors file ({err}). Export the "
                              "member again (pipeline-export) or copy the file anew.") from err
    ckpt = load_checkpoint(path, fix="Re-create the file from the member's training run, or export plain weights "
                                    "(model.safetensors).")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise MemberError(f"{path} holds no state_dict.")
    return strip_model_prefix({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


# Model keyword arguments that would make timm read files or reach the network: a member.json from elsewhere
# may only set architecture options (drop_rate, global_pool...), never where weights come from.
_UNSAFE_KWARGS = ("checkpoint_path", "cache_dir", "weights", "file", "url")


def _unsafe_kwarg(key: str) -> bool:
    return key.startswith("pretrained") or key in _UNSAFE_KWARGS


def build_model(member: Member) -> nn.Module:
    """Rebuild a member's network from its manifest and load its weights (``weights_only``), in eval mode.

    Raises:
        MemberError: ``model_kwargs`` asks timm to load something, the architecture cannot be built, or the
            weights do not fit it; the message names the member folder.
    """
    m = member.manifest
    unsafe = sorted(k for k in m.model_kwargs if _unsafe_kwarg(k))
    if unsafe:
        raise MemberError(
            f"{member.path}/member.json: model_kwargs {unsafe} would make timm load weights or files; a member's "
            "weights come only from its checkpoint. Remove them."
        )
    try:
        model = create_model(m.model_name, num_classes=m.num_classes, in_chans=m.in_chans, **m.model_kwargs)
    except (ValueError, TypeError, RuntimeError) as err:
        raise MemberError(f"Member {member.path}: cannot build model {m.model_name!r}: {err}") from err
    state = load_state_dict(member.checkpoint)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ
        raise MemberError(f"{member.checkpoint} does not fit model '{m.model_name}': {err}") from err
    if missing or unexpected:
        raise MemberError(
            f"{member.checkpoint} does not fit model '{m.model_name}': missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def model_meta(member: Member) -> dict[str, Any]:
    """``model.json``: what a notebook needs to rebuild and feed the network with timm alone."""
    m = member.manifest
    return {
        "model_name": m.model_name, "classes": m.classes, "in_chans": m.in_chans, "model_kwargs": m.model_kwargs,
        "input_size": [m.in_chans, m.crop_size, m.crop_size], "eval_image_size": m.image_size, "crop_size": m.crop_size,
        "mean": m.mean, "std": m.std, "interpolation": "bilinear",
        # first_conv=None: the weights already have in_chans input channels, timm must not adapt them again;
        # num_classes: the head is ours, timm must not drop it as a mismatch with the ImageNet default.
        "pretrained_cfg_overlay": {"file": WEIGHTS, "num_classes": m.num_classes, "first_conv": None},
        "note": "eval: resize to eval_image_size, normalise with mean/std (0-1 scale), crop crop_size (TTA); "
                "file paths are relative to this folder",
    }


def export_member(folder: Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into a member folder; return the weights path."""
    member = Member(folder, read_manifest(folder))
    state = {k: v.contiguous() for k, v in load_state_dict(member.checkpoint).items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"model_name": member.manifest.model_name})
    write_json(folder / META, model_meta(member))
    return folder / WEIGHTS
