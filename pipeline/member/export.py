"""Export an ensemble: copy every completed member, as safetensors + JSON + manifest, into one folder.

The exported folder is shippable to an offline notebook (a Kaggle code competition): each exported
member folder is also a valid member for prediction, with ``member.json`` pointing at the safetensors
file, and timm alone loads its weights (see :mod:`pipeline.member.weights`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from pipeline.core.io import write_json
from pipeline.member.folder import find_members
from pipeline.member.manifest import read_manifest, write_manifest
from pipeline.member.weights import META, WEIGHTS, export_member

__all__ = ["export_ensemble"]

# Everything a predict run needs besides the weights; checkpoints and logs stay behind.
_CARRIED = ("classes.json", "eval_transform.json", "folds.csv", "val_predictions.csv", "metrics.json", "config.yaml")


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
