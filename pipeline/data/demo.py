"""Write the bundled Fashion-MNIST subset as a Kaggle-style competition folder.

The subset ships inside the package, in ``pipeline/demo_data/fashion_mnist_subset.npz`` (see
``pipeline/demo_data/SOURCE.md``), so an installed wheel can run the demo too. This module
turns it into the layout a real competition download has, so the demo exercises the same data layer:

    <out>/train.csv              id,label        (label = class name)
    <out>/train/<id>.png
    <out>/test/<id>.png
    <out>/sample_submission.csv  id,label        (a valid placeholder submission)
    <out>/solution.csv           id,label        (hidden test labels; only for the demo leaderboard)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.io import atomic_path

__all__ = ["CLASSES", "DEFAULT_OUT", "SUBSET_FILE", "SUBSET_SHA256", "load_subset", "prepare_demo"]

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SUBSET_FILE = Path(__file__).resolve().parent.parent / "demo_data" / "fashion_mnist_subset.npz"
SUBSET_SHA256 = "aa38050b7d79b14d5ef54526724c40401ff9a578951c44124904899567bb2373"
DEFAULT_OUT = Path("data") / "fashion-mnist-demo"  # relative to the working directory, as conf/data/demo.yaml


def _write_split(images: np.ndarray, prefix: str, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"{prefix}{i:05d}" for i in range(len(images))]
    for img_id, img in zip(ids, images):
        Image.fromarray(img).save(folder / f"{img_id}.png", optimize=False)
    return ids


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def load_subset(subset: str | Path = SUBSET_FILE) -> dict[str, np.ndarray]:
    """The bundled subset's arrays (``train_images``, ``train_labels``, ``test_images``, ``test_labels``...),
    after checking its SHA-256 against :data:`SUBSET_SHA256`."""
    subset = Path(subset)
    if not subset.exists():
        raise FileNotFoundError(f"Demo subset {subset} is missing; regenerate it with scripts/make_demo_subset.py "
                                "(from a clone)")
    digest = hashlib.sha256(subset.read_bytes()).hexdigest()
    if digest != SUBSET_SHA256:
        raise ValueError(f"{subset}: sha256 {digest} does not match the recorded {SUBSET_SHA256}")
    with np.load(subset) as data:
        return {key: data[key] for key in data.files}


def prepare_demo(
    out_dir: str | Path = DEFAULT_OUT,
    subset: str | Path = SUBSET_FILE,
    force: bool = False,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Path:
    """Write the demo competition folder; return its path.

    A finished folder is recognised by its ``solution.csv`` (written last) and left as it is unless
    ``force`` is set, so ``make demo`` can call this every time.

    Args:
        out_dir: where to write the competition.
        subset: the bundled ``.npz``.
        force: rewrite a complete folder.
        n_train: keep only the first ``n_train`` training images (a quick slice, e.g. for tests).
        n_test: keep only the first ``n_test`` test images.
    """
    out_dir, subset = Path(out_dir), Path(subset)
    if (out_dir / "solution.csv").exists() and not force:
        return out_dir
    data = load_subset(subset)
    train_x, train_y = data["train_images"][:n_train], data["train_labels"][:n_train]
    test_x, test_y = data["test_images"][:n_test], data["test_labels"][:n_test]
    train_ids = _write_split(train_x, "tr", out_dir / "train")
    test_ids = _write_split(test_x, "te", out_dir / "test")
    names = np.array(CLASSES)
    _write_csv(pd.DataFrame({"id": train_ids, "label": names[train_y]}), out_dir / "train.csv")
    _write_csv(pd.DataFrame({"id": test_ids, "label": CLASSES[0]}), out_dir / "sample_submission.csv")
    _write_csv(pd.DataFrame({"id": test_ids, "label": names[test_y]}), out_dir / "solution.csv")
    return out_dir
