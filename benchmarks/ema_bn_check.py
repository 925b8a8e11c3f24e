"""Where the EMA arms of ``bench_recipes`` lose accuracy: the averaged weights or the averaged BatchNorm statistics.

For each holdout member of an EMA sweep (``benchmarks.bench_recipes``), loads ``checkpoints/last.ckpt``, which
holds the average (``state_dict``) and the raw weights of the last step (``current_model_state``), and scores both
on the member's validation rows as they are, then again after recomputing every BatchNorm layer's running
statistics on the member's training rows (one pass, no augmentation, cumulative average), as
``torch.optim.swa_utils.update_bn`` would. Images are read like the eval transform of a 32→28-px grey member
(resize to 32 px, centre 28 px, the member's mean and std); the "as they are" accuracy of the average matches
the member's ``metrics.json`` ``val_acc``, which checks that reading.

    python -m benchmarks.ema_bn_check <sweep folder> <competition folder>

Not part of ``run_all``: a one-off check recorded in RESULTS.md's analysis (item 13).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _images(comp: Path, ids: pd.Series, mean: float, std: float, size: int, crop: int) -> np.ndarray:
    import cv2

    out = []
    for i in ids:
        im = cv2.imread(str(comp / "train" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        im = cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) if im.shape != (size, size) else im
        top = (size - crop) // 2
        out.append((im[top:top + crop, top:top + crop].astype(np.float32) / 255.0 - mean) / std)
    return np.stack(out)[:, None]


def check_member(member: Path, comp: Path) -> list[str]:
    """One line per weight set (average, raw): validation accuracy as saved and with recomputed BN statistics."""
    import timm
    import torch

    import pipeline.models.classic  # noqa: F401  (registers lenet5 with timm)

    info = json.loads((member / "member.json").read_text())
    folds = pd.read_csv(member / "folds.csv")
    val, fit = folds[folds["fold"] == info["fold"]], folds[folds["fold"] != info["fold"]]
    args = (info["mean"][0], info["std"][0], info["image_size"], info["crop_size"])
    xv, yv = torch.tensor(_images(comp, val["id"], *args)), torch.tensor(val["label"].astype(int).to_numpy())
    xt = torch.tensor(_images(comp, fit["id"], *args))
    ckpt = torch.load(member / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    lines = []
    for name, state in (("average", ckpt["state_dict"]), ("raw last step", ckpt["current_model_state"])):
        net = timm.create_model(info["model_name"], num_classes=len(info["classes"]), in_chans=info["in_chans"])
        net.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        with torch.no_grad():
            saved = (net.eval()(xv).argmax(1) == yv).float().mean().item()
            norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the pass
            net.train()
            for i in range(0, len(xt), 64):
                net(xt[i:i + 64])
            recomputed = (net.eval()(xv).argmax(1) == yv).float().mean().item()
        lines.append(f"{member.name} {name}: val accuracy {saved:.3f} as saved, {recomputed:.3f} with BN statistics "
                     f"recomputed ({len(norms)} BN layers, {len(val)} val rows)")
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI: every member of one EMA sweep folder."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python -m benchmarks.ema_bn_check <sweep folder> <competition folder>")
    sweep, comp = Path(argv[0]), Path(argv[1])
    for member in sorted(p.parent for p in sweep.glob("*/member.json")):
        print("\n".join(check_member(member, comp)), flush=True)


if __name__ == "__main__":
    main()
