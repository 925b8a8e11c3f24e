"""Regenerate the bundled Fashion-MNIST demo subset from the official idx files.

Source: Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
which ships Zalando Research's official idx files under ``/usr/share/datasets/fashion-mnist``
(MIT licence). The subset is stratified and fixed by a seed: 1,000 training images per class
from the official training split and 200 test images per class from the official test split.

Usage:
    python scripts/make_demo_subset.py [--src /usr/share/datasets/fashion-mnist] [--out pipeline/demo_data]

It writes ``fashion_mnist_subset.npz`` and prints its SHA-256, which SOURCE.md records.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

SEED = 20261125
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file (images: N x 28 x 28 uint8, labels: N uint8)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``per_class`` indices of every class, returned in ascending order."""
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picked))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "pipeline" / "demo_data")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    x_train = read_idx(args.src / "train-images-idx3-ubyte.gz")
    y_train = read_idx(args.src / "train-labels-idx1-ubyte.gz")
    x_test = read_idx(args.src / "t10k-images-idx3-ubyte.gz")
    y_test = read_idx(args.src / "t10k-labels-idx1-ubyte.gz")
    tr = stratified(y_train, TRAIN_PER_CLASS, rng)
    te = stratified(y_test, TEST_PER_CLASS, rng)

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        train_images=x_train[tr], train_labels=y_train[tr], train_source_index=tr.astype(np.int32),
        test_images=x_test[te], test_labels=y_test[te], test_source_index=te.astype(np.int32),
    )
    out = args.out / "fashion_mnist_subset.npz"
    out.write_bytes(buf.getvalue())
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256={hashlib.sha256(buf.getvalue()).hexdigest()}")


if __name__ == "__main__":
    main()
