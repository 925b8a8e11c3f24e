"""Small Kaggle-style competitions for the binary, multi-label, regression and ordinal tasks, from shipped data.

Each one is written, like the multiclass demo (:mod:`pipeline.data.demo`), as the folder a competition
download gives: ``train.csv``, ``train/<id>.png``, ``test/<id>.png``, ``sample_submission.csv`` and the
hidden test targets in ``solution.csv`` (written last: its presence marks a finished folder). Nothing is
downloaded: the images come from the bundled Fashion-MNIST subset, scikit-learn's digits (inside its
wheel) or shapes drawn here, and the same ``seed`` and sizes give the same bytes.

=========== ================ ===================== ================================================ ============
task        folder           columns               target                                           metric
=========== ================ ===================== ================================================ ============
multilabel  fashion-mosaics  ``image_name,tags``   the classes in a 2×2 mosaic of 1 to 4 Fashion-   f2_samples
                                                   MNIST images (56 px), space-separated (Planet)
ordinal     digit-grades     ``id_code,diagnosis`` a scikit-learn digit's value, 0..9 (8 px → 32 px)  qwk
regression  shape-sizes      ``Id,target``         half the side of a drawn shape's bounding box,    rmse
                                                   in pixels, 4..12 on a 32-px noisy texture
binary      fashion-footwear ``image_name,target`` 1 for Sandal, Sneaker, Ankle boot; the sample     roc_auc
                                                   holds probabilities
=========== ================ ===================== ================================================ ============

The writer also records its request in ``task_demo.json``: a finished folder is reused only for the same
request, so a changed ``seed`` or size is never answered with the old files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import atomic_path, read_json, write_json
from pipeline.data.demo import CLASSES, SUBSET_FILE, load_subset

__all__ = ["TASK_DEMOS", "TAGS", "FOOTWEAR", "SIZE_RANGE", "DemoTask", "TaskData", "write_task_demo",
           "describe_targets", "task_demo_out"]

TAGS = ["t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
"""The multi-label tags: Fashion-MNIST's class names (:data:`pipeline.data.demo.CLASSES`) without spaces or '/'."""
FOOTWEAR = ("Sandal", "Sneaker", "Ankle boot")
"""The binary task's positive classes."""
SIZE_RANGE = (4.0, 12.0)
"""The regression target's range: half the side of the shape's bounding box, in pixels."""
RECORD = "task_demo.json"
_SHAPES = ("circle", "square", "triangle_up", "triangle_down")
_N_DIGITS = 1797  # scikit-learn's digits


@dataclass(frozen=True)
class TaskData:
    """One competition in memory: uint8 images and their targets (tags as a 0/1 matrix for multi-label)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class DemoTask:
    """How one task's competition is made and laid out."""

    folder: str
    id_col: str
    target_col: str
    prefix: tuple[str, str]  # train and test id prefixes
    max_train: int
    max_test: int
    make: Callable[[int, int, int], TaskData]  # (n_train, n_test, seed) → the competition in memory
    placeholder: str  # the sample submission's value on every row


def task_demo_out(task: str) -> Path:
    """Where ``pipeline-demo-data --task <task>`` writes, relative to the working directory (as the configs)."""
    return Path("data") / TASK_DEMOS[task].folder


# --------------------------------------------------------------------------- the four makers


def _fashion_pools(seed: int, stream: int, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """``n_train`` and ``n_test`` distinct images (and labels) drawn from the subset's train and test splits;
    each task draws from its own ``stream``, so two tasks of one seed do not start with the same images."""
    data = load_subset(SUBSET_FILE)
    rng = np.random.default_rng([seed, stream])
    tr = rng.permutation(len(data["train_labels"]))[:n_train]
    te = rng.permutation(len(data["test_labels"]))[:n_test]
    return data["train_images"][tr], data["train_labels"][tr], data["test_images"][te], data["test_labels"][te]


def _mosaic(tiles: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Groups of 4 tiles as 2×2 mosaics (56 px) of which 1 to 4 tiles are kept (the others black, as
    Fashion-MNIST's background), and the 0/1 matrix of the classes each one shows."""
    n = len(tiles) // 4
    kept = rng.permuted(np.arange(4)[None, :] < rng.integers(1, 5, n)[:, None], axis=1)  # [n, 4]: 1 to 4 kept
    tiles = np.where(kept.reshape(-1, 1, 1), tiles, 0).astype(np.uint8)
    quads = tiles.reshape(n, 2, 2, 28, 28).transpose(0, 1, 3, 2, 4).reshape(n, 56, 56)
    tags = np.zeros((n, len(TAGS)), dtype=np.int64)
    rows, tile = np.nonzero(kept)
    tags[rows, labels.reshape(n, 4)[rows, tile]] = 1
    return quads, tags


def make_mosaics(n_train: int, n_test: int, seed: int) -> TaskData:
    """Multi-label: 2×2 mosaics of 1 to 4 distinct Fashion-MNIST images; the tags are the classes present."""
    tr_x, tr_y, te_x, te_y = _fashion_pools(seed, 0, 4 * n_train, 4 * n_test)
    rng = np.random.default_rng([seed, 1])
    return TaskData(*_mosaic(tr_x, tr_y, rng), *_mosaic(te_x, te_y, rng))


def make_footwear(n_train: int, n_test: int, seed: int) -> TaskData:
    """Binary: Fashion-MNIST images, target 1 for footwear (:data:`FOOTWEAR`), else 0."""
    tr_x, tr_y, te_x, te_y = _fashion_pools(seed, 2, n_train, n_test)
    positive = np.array([c in FOOTWEAR for c in CLASSES])
    return TaskData(tr_x, positive[tr_y].astype(np.int64), te_x, positive[te_y].astype(np.int64))


def make_grades(n_train: int, n_test: int, seed: int) -> TaskData:
    """Ordinal: scikit-learn's 8×8 digits upscaled to 32 px; the grade is the digit (a stratified split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = (digits.images * 255 / 16).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR)) for im in grey])
    tr, te = train_test_split(np.arange(len(digits.target)), train_size=n_train, test_size=n_test,
                              stratify=digits.target, random_state=seed)
    return TaskData(images[tr], digits.target[tr].astype(np.int64), images[te], digits.target[te].astype(np.int64))


def _shape_mask(kind: str, cy: float, cx: float, r: float) -> np.ndarray:
    """A shape whose bounding box is 2r×2r, centred on (cy, cx), on a 32-px grid."""
    y, x = np.mgrid[0:32, 0:32].astype(float) + 0.5
    if kind == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    depth = (y - (cy - r)) if kind == "triangle_up" else ((cy + r) - y)  # 0 at the apex, 2r at the base
    return (depth >= 0) & (depth <= 2 * r) & (np.abs(x - cx) <= depth / 2)


def _draw_shapes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    low, high = SIZE_RANGE
    y, x = np.mgrid[0:32, 0:32].astype(float)
    images, sizes = np.empty((n, 32, 32), dtype=np.uint8), np.round(rng.uniform(low, high, n), 2)
    for i, r in enumerate(sizes):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 1.2)
        texture = 60 + 25 * np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 6.3))
        cy, cx = rng.uniform(r + 2.5, 29.5 - r, 2)  # inside the centre 28-px crop
        shape = _shape_mask(_SHAPES[rng.integers(len(_SHAPES))], cy, cx, r)
        images[i] = np.clip(texture + rng.uniform(90, 150) * shape + rng.normal(0, 12, (32, 32)), 0, 255)
    return images, sizes


def make_sizes(n_train: int, n_test: int, seed: int) -> TaskData:
    """Regression: one drawn shape (circle, square, triangle) per image; the target is its size (:data:`SIZE_RANGE`)."""
    rng = np.random.default_rng(seed)
    return TaskData(*_draw_shapes(n_train, rng), *_draw_shapes(n_test, rng))


TASK_DEMOS: dict[str, DemoTask] = {
    "multilabel": DemoTask("fashion-mosaics", "image_name", "tags", ("train_", "test_"), 2500, 500, make_mosaics,
                           "t_shirt trouser"),
    "ordinal": DemoTask("digit-grades", "id_code", "diagnosis", ("tr", "te"), _N_DIGITS - 10, _N_DIGITS - 10,
                        make_grades, "0"),
    "regression": DemoTask("shape-sizes", "Id", "target", ("tr", "te"), 100_000, 100_000, make_sizes,
                           str(sum(SIZE_RANGE) / 2)),
    "binary": DemoTask("fashion-footwear", "image_name", "target", ("train_", "test_"), 10_000, 2_000, make_footwear,
                       "0.5"),
}
"""``data.task`` → its demo competition."""


# --------------------------------------------------------------------------- checks, layout, writing


@dataclass(frozen=True)
class _Request:
    task: str
    n_train: int
    n_test: int
    seed: int


def _check(req: _Request) -> DemoTask:
    """The request is one the task can serve, before anything is written."""
    if req.task not in TASK_DEMOS:
        raise ConfigError(f"--task {req.task!r} has no demo competition; accepted: {', '.join(TASK_DEMOS)}")
    spec = TASK_DEMOS[req.task]
    for name, value, most in (("n_train", req.n_train, spec.max_train), ("n_test", req.n_test, spec.max_test)):
        if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= most:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r}: the {req.task} demo takes an integer from 10 "
                              f"to {most}")
    if req.task == "ordinal" and req.n_train + req.n_test > _N_DIGITS:
        raise ConfigError(f"--n-train {req.n_train} + --n-test {req.n_test}: the ordinal demo has {_N_DIGITS} digits "
                          f"in all")
    if isinstance(req.seed, bool) or not isinstance(req.seed, int) or req.seed < 0:
        raise ConfigError(f"--seed {req.seed!r}: give a non-negative integer")
    return spec


def _check_folder(out_dir: Path, req: _Request, force: bool) -> bool:
    """Whether ``out_dir`` already holds this request's finished competition; refuse someone else's folder."""
    record = out_dir / RECORD
    if force or not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if not record.is_file():
        raise DataError(f"{out_dir} is not empty and holds no {RECORD}: it is not a task demo folder. Choose another "
                        f"--out, or pass --force to write into it")
    held = read_json(record)
    if held != asdict(req):
        raise DataError(f"{record} records {held}, not the requested {asdict(req)}; pass --force to rewrite the folder")
    return (out_dir / "solution.csv").is_file()


def _targets(task: str, y: np.ndarray) -> list[str] | np.ndarray:
    """Targets as the CSV cells hold them: space-separated tags, integers, or sizes."""
    if task == "multilabel":
        return [" ".join(TAGS[j] for j in np.flatnonzero(row)) for row in y]
    return y


def _write_images(images: np.ndarray, ids: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    keep = set(ids)
    for stale in folder.glob("*.png"):  # a rewrite with fewer rows leaves no image of the old one behind
        if stale.stem not in keep:
            stale.unlink()
    for img_id, img in zip(ids, images):
        Image.fromarray(img).save(folder / f"{img_id}.png", optimize=False)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_task_demo(task: str, out_dir: str | Path | None = None, n_train: int = 600, n_test: int = 200,
                    seed: int = 0, force: bool = False) -> Path:
    """Write the demo competition of ``task`` (a key of :data:`TASK_DEMOS`); return its folder.

    Args:
        task: multilabel, ordinal, regression or binary.
        out_dir: where to write; None: :func:`task_demo_out` (``data/<folder>``, relative to the working directory).
        n_train: training rows (images or mosaics).
        n_test: test rows.
        seed: every random draw (images chosen, the split, the shapes).
        force: rewrite a finished folder, or write into a folder that is not a task demo's.

    Raises:
        ConfigError: an unknown task, or sizes or a seed the task cannot serve.
        DataError: ``out_dir`` holds another competition or another request (without ``force``).
    """
    req = _Request(task, n_train, n_test, seed)
    spec = _check(req)
    out_dir = Path(out_dir) if out_dir is not None else task_demo_out(task)
    if _check_folder(out_dir, req, force):
        return out_dir
    data = spec.make(n_train, n_test, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "solution.csv").unlink(missing_ok=True)
    write_json(out_dir / RECORD, asdict(req))
    ids = [[f"{prefix}{i:05d}" for i in range(n)] for prefix, n in zip(spec.prefix, (n_train, n_test))]
    _write_images(data.train_x, ids[0], out_dir / "train")
    _write_images(data.test_x, ids[1], out_dir / "test")
    cols = (spec.id_col, spec.target_col)
    _write_csv(pd.DataFrame(dict(zip(cols, (ids[0], _targets(task, data.train_y))))), out_dir / "train.csv")
    sample = pd.DataFrame({spec.id_col: ids[1], spec.target_col: spec.placeholder})
    _write_csv(sample, out_dir / "sample_submission.csv")
    _write_csv(pd.DataFrame(dict(zip(cols, (ids[1], _targets(task, data.test_y))))), out_dir / "solution.csv")
    return out_dir


def describe_targets(task: str, targets: pd.Series) -> str:
    """One line on how balanced a column of targets (as the CSV holds them) is.

    >>> describe_targets("binary", pd.Series([0, 1, 0, 0]))
    '4 rows; positive 25.0%'
    """
    n = len(targets)
    if task == "binary":
        return f"{n} rows; positive {100 * targets.astype(int).mean():.1f}%"
    if task == "ordinal":
        counts = targets.astype(int).value_counts().sort_index()
        return f"{n} rows; grades " + ", ".join(f"{g}: {c}" for g, c in counts.items())
    if task == "regression":
        v = targets.astype(float)
        edges = np.linspace(*SIZE_RANGE, 5)
        hist = np.histogram(v, bins=edges)[0]
        bins = ", ".join(f"[{a:g}, {b:g}): {c}" for a, b, c in zip(edges[:-1], edges[1:], hist))
        return f"{n} rows; min {v.min():.2f}, mean {v.mean():.2f}, max {v.max():.2f}; {bins}"
    tags = targets.astype(str).str.split()
    freq = {t: sum(t in row for row in tags) / n for t in TAGS}
    return (f"{n} rows; {tags.map(len).mean():.2f} tags per image; present in "
            + ", ".join(f"{t} {100 * f:.0f}%" for t, f in freq.items()))
