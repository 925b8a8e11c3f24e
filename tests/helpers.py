"""Test helpers shared by several test modules."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image

from pipeline.cli.train import train_spec
from pipeline.train.fit import train_member

TINY_CLASSES = ("Dress", "Sandal", "Bag")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the member a composed ``train`` config describes, as ``pipeline-train`` does (without failure recording)."""
    return train_member(train_spec(cfg))


def write_competition(
    root: Path, classes: Sequence[str] = TINY_CLASSES, per_class: int = 8, n_test: int = 6, size: int = 32
) -> Path:
    """A tiny real competition: ``train.csv`` (id,label), ``train/<id>.png``, ``test/``, ``sample_submission.csv``.

    Greyscale ``size``×``size`` PNGs whose brightness depends on the class, so a network can learn them.
    """
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for c, label in enumerate(classes):
        for k in range(per_class):
            image_id = f"tr{c}{k:03d}"
            pixels = (rng.integers(0, 60, (size, size)) + 90 * c).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / "train" / f"{image_id}.png")
            rows.append((image_id, label))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    test_ids = [f"te{k:03d}" for k in range(n_test)]
    for image_id in test_ids:
        Image.fromarray(rng.integers(0, 255, (size, size)).astype(np.uint8), "L").save(root / "test" / f"{image_id}.png")
    pd.DataFrame({"id": test_ids, "label": classes[0]}).to_csv(root / "sample_submission.csv", index=False)
    return root


def copy_competition(source: Path, root: Path) -> Path:
    """A private copy of a competition folder a test may damage."""
    shutil.copytree(source, root)
    return root


def files_under(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative path → mtime in ns), to show that nothing was written or changed."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    """Temporary files left under ``folder`` (``.<name>....tmp``)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def unprivileged(cmd: Sequence[str]) -> list[str]:
    """``cmd`` without the power to write into read-only folders (root ignores permission bits otherwise)."""
    if os.geteuid() != 0:
        return list(cmd)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running as root without `setpriv`: cannot drop the capability to ignore permissions")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
