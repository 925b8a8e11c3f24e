"""``pipeline-export``: members as safetensors + a small JSON, loadable with timm alone.

Every completed member gets ``model.safetensors`` and ``model.json`` in its own folder (training calls
:func:`export_member`). ``pipeline-export`` copies a whole ensemble into one shippable folder, for an
offline notebook (a Kaggle code competition): each exported member folder is also a valid member for
``pipeline-predict``, with ``member.json`` pointing at the safetensors file.

Loading an exported model in a notebook needs only timm (plus ``import pipeline.classic`` for the
classic networks)::

    meta = json.load(open("model.json"))
    model = timm.create_model(meta["model_name"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"],
                              pretrained=True, pretrained_cfg_overlay=meta["pretrained_cfg_overlay"], **meta["model_kwargs"])
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from pipeline.member import Member, find_members, load_state_dict, read_manifest, write_manifest
from pipeline.utils import atomic_path, write_json

__all__ = ["WEIGHTS", "META", "export_member", "export_ensemble", "main"]

WEIGHTS = "model.safetensors"
META = "model.json"
# Everything a predict run needs besides the weights; checkpoints and logs stay behind.
_CARRIED = ("classes.json", "eval_transform.json", "folds.csv", "val_predictions.csv", "metrics.json", "config.yaml")


def _meta(member: Member) -> dict[str, Any]:
    m = member.manifest
    return {
        "model_name": m.model_name, "classes": m.classes, "in_chans": m.in_chans, "model_kwargs": m.model_kwargs,
        "input_size": [m.in_chans, m.crop_size, m.crop_size], "eval_image_size": m.image_size, "crop_size": m.crop_size,
        "mean": m.mean, "std": m.std, "interpolation": "bilinear",
        # first_conv=None: the weights already have in_chans input channels, timm must not adapt them again;
        # num_classes: the head is ours, timm must not drop it as a mismatch with the ImageNet default.
        "pretrained_cfg_overlay": {"file": WEIGHTS, "num_classes": m.num_classes, "first_conv": None},
        "note": "eval: resize to eval_image_size, normalise with mean/std (0-1 scale), crop crop_size (TTA)",
    }


def export_member(folder: Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into a member folder; return the weights path."""
    member = Member(folder, read_manifest(folder))
    state = {k: v.contiguous() for k, v in load_state_dict(member.checkpoint).items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"model_name": member.manifest.model_name})
    write_json(folder / META, _meta(member))
    return folder / WEIGHTS


def export_ensemble(members_spec: str | list[str], out_dir: Path) -> list[Path]:
    """Copy every completed member, as safetensors + JSON + manifest, into ``out_dir/<member>``."""
    members, skipped = find_members(members_spec)
    out: list[Path] = []
    for member in members:
        dst = out_dir / member.name
        dst.mkdir(parents=True, exist_ok=True)
        if not (member.path / WEIGHTS).is_file():
            export_member(member.path)
        for name in (WEIGHTS, META, *_CARRIED):
            if (member.path / name).is_file():
                shutil.copy2(member.path / name, dst / name)
        manifest = read_manifest(member.path)
        manifest.checkpoint = WEIGHTS
        write_manifest(dst, manifest)
        out.append(dst)
    write_json(out_dir / "ensemble.json", {"members": [p.name for p in out], "skipped": skipped,
                                           "manifests": {m.name: asdict(m.manifest) for m in members}})
    return out


def main() -> None:
    """Console entry point ``pipeline-export MEMBERS... --out DIR``."""
    parser = argparse.ArgumentParser(description="Export members as safetensors + JSON for offline inference.")
    parser.add_argument("members", nargs="+", help="sweep folder(s), member folders or globs")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the exported ensemble to")
    args = parser.parse_args()
    for path in export_ensemble(args.members, args.out):
        print(f"exported {path}")


if __name__ == "__main__":
    main()
