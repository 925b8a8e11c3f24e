"""Benchmark 8: uplift — what ensembling and TTA buy over the best single model, on held-out test labels.

For each data set and each seed: train a small sweep of real members (``resnet10t`` twice and ``lenet5``
by default, a few epochs, a holdout split), predict it with the configured ``pipeline-predict`` (every
registered ``ensemble=`` method of this checkout, ``test_all_policies=true``), and score on the test
set's hidden labels (``solution.csv``), which neither training nor the weight fitting saw:

* **best single, no TTA**: the model with the best OOF score under policy ``none`` (the report's
  baseline rule), predicted with one view;
* **best single, chosen TTA**: the same model under the policy ``tta=auto`` chose for it (when this
  checkout has ``tta=auto``), else the policy picked by the report's nested cross-fitted rule on OOF rows;
* **each merge method** (``ensemble=mean``, ``caruana`` and, where present, ``rank``, ``stack``,
  ``optimize``), under the submission policy ``--ensemble-tta``;
* **the auto choice** (``ensemble=auto``, where present).

Each row gets its test accuracy and its relative error reduction (RER) over the baseline with a 95%
paired bootstrap interval (test rows resampled). Uplift on small data swings with training noise, so
each data set is repeated over seeds (member seeds and nothing else change), and the mean and spread
of the RER across seeds sit next to each run's interval.

Data sets: the bundled Fashion-MNIST demo subset; scikit-learn's 8×8 digits, upscaled to 32 px; shapes
this benchmark draws itself (circle, square, triangle up, triangle down on a striped, noisy texture: a
vertical flip swaps two classes, a horizontal flip changes nothing); and ``photos``, 32-px grey tiles of
eight photographs shipped inside the scikit-image wheel (the class is the photo).

Members train until their validation log loss stops improving (``--patience``, at most ``--epochs``), as
users train them; ``--patience 0`` gives the old fixed-epoch runs. ``benchmarks.bench_choice`` replays the
automatic-choice rules on the same sweeps.

    python -m benchmarks.bench_uplift                       # defaults: 4 data sets × 3 seeds (about 1.5 h on 2 cores)
    python -m benchmarks.bench_uplift --datasets digits --seeds 1 --epochs 1 --n-train 600 --n-test 300   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import DEFAULT_WORKDIR, log_progress, machine_info, quiet, save_result

__all__ = ["DATASETS", "run", "main", "make_digits", "make_shapes", "make_dataset", "train_sweep", "predict_sweep",
           "read_test_probs", "score_run", "seed_rows"]

NAME = "uplift"
DATASETS = ("demo", "digits", "shapes", "photos")
METHODS = ("mean", "caruana", "rank", "stack", "optimize", "auto")  # those with a conf/ensemble/<name>.yaml run
POLICIES = ("none", "hflip", "vflip", "five_crop", "ten_crop")     # those with a conf/tta/<name>.yaml run
SHAPES = ("circle", "square", "triangle_up", "triangle_down")
PHOTOS = ("astronaut", "brick", "camera", "coffee", "grass", "gravel", "moon", "rocket")
"""scikit-image's bundled photographs (in its wheel, no download) whose 32-px tiles make the ``photos`` set."""


# --------------------------------------------------------------------------- data sets


def _write_comp(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], n_test: int, seed: int) -> Path:
    """A Kaggle-style folder (train/, test/, train.csv, sample_submission.csv, solution.csv) of 32-px PNGs."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    if (root / "solution.csv").is_file():
        return root
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=n_test, stratify=labels, random_state=seed)
    names = np.array(classes)
    for split, rows, prefix in (("train", train, "tr"), ("test", test, "te")):
        (root / split).mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(rows):
            Image.fromarray(images[i]).save(root / split / f"{prefix}{j:06d}.png", compress_level=1)
    tr_ids, te_ids = [f"tr{j:06d}" for j in range(len(train))], [f"te{j:06d}" for j in range(len(test))]
    pd.DataFrame({"id": tr_ids, "label": names[labels[train]]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": te_ids, "label": classes[0]}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"id": te_ids, "label": names[labels[test]]}).to_csv(root / "solution.csv", index=False)
    return root


def make_digits(root: Path, n_train: int, n_test: int) -> Path:
    """scikit-learn's 8×8 digits (1,797 images, shipped with the package), upscaled to 32 px."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = min(len(digits.target), n_train + n_test)
    images = np.stack([cv2.resize((im * 255 / 16).astype(np.uint8), (32, 32), interpolation=cv2.INTER_LINEAR)
                       for im in digits.images[:n]])
    return _write_comp(root, images, digits.target[:n], [str(d) for d in range(10)], min(n_test, n // 3), 0)


def _shape_mask(kind: str, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32].astype(float)
    if kind == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(y - cy) <= r * 0.85) & (np.abs(x - cx) <= r * 0.85)
    depth = (y - (cy - r)) if kind == "triangle_up" else ((cy + r) - y)  # 0 at the apex, 2r at the base
    return (depth >= 0) & (depth <= 2 * r) & (np.abs(x - cx) <= depth / 2)


def make_shapes(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Shapes on a striped, noisy texture; the class is the shape (triangles up and down differ only by a vertical flip)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = np.arange(n) % len(SHAPES)
    rng.shuffle(labels)
    y, x = np.mgrid[0:32, 0:32].astype(float)
    images = np.empty((n, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 1.2)
        texture = 60 + 30 * np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 6.3))
        r = rng.uniform(5, 9)
        cy, cx = rng.uniform(r + 1, 31 - r, 2)
        image = texture + rng.uniform(70, 140) * _shape_mask(SHAPES[label], cy, cx, r) + rng.normal(0, 25, (32, 32))
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return _write_comp(root, images, labels, list(SHAPES), n_test, seed)


def make_photos(root: Path, n_train: int, n_test: int) -> Path:
    """Real photographs: which of scikit-image's bundled photos a 32-px grey tile comes from.

    Each photo (:data:`PHOTOS`, shipped inside the scikit-image wheel) is turned grey, resized so its
    shorter side is 512 px and centre-cropped to 512×512, then cut into non-overlapping 32-px tiles
    (256 per photo, 2,048 in all); train and test tiles are a stratified split of those tiles, so no
    pixel is in both. Flat regions (sky, a table top) look alike across photos, so the task is not easy.
    """
    import os

    import skimage
    from PIL import Image

    folder = Path(os.path.dirname(skimage.__file__)) / "data"
    tiles, labels = [], []
    for label, name in enumerate(PHOTOS):
        path = next(folder / f"{name}{ext}" for ext in (".png", ".jpg") if (folder / f"{name}{ext}").is_file())
        im = Image.open(path).convert("L")
        scale = 512 / min(im.size)
        im = im.resize((max(512, round(im.size[0] * scale)), max(512, round(im.size[1] * scale))), Image.BILINEAR)
        left, top = (im.size[0] - 512) // 2, (im.size[1] - 512) // 2
        pixels = np.asarray(im.crop((left, top, left + 512, top + 512)), dtype=np.uint8)
        for y in range(0, 512, 32):
            for x in range(0, 512, 32):
                tiles.append(pixels[y:y + 32, x:x + 32])
                labels.append(label)
    images, target = np.stack(tiles), np.array(labels)
    n = min(len(target), n_train + n_test)
    if n < len(target):  # a stratified subset of the tiles
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(target)), train_size=n, stratify=target, random_state=0)
        images, target = images[np.sort(keep)], target[np.sort(keep)]
    return _write_comp(root, images, target, list(PHOTOS), min(n_test, n // 3), 0)


def make_dataset(name: str, root: Path, n_train: int, n_test: int) -> Path:
    """The competition folder of data set ``name`` (reused when complete)."""
    if name == "demo":
        from pipeline.data.demo import prepare_demo

        return prepare_demo(root, n_train=n_train, n_test=n_test)
    makers = {"digits": make_digits, "shapes": make_shapes, "photos": make_photos}
    return makers[name](root, n_train, n_test)


# --------------------------------------------------------------------------- train and predict (real configs)


def _compose(config: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.cli.config import register

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def train_sweep(sweep: Path, comp: Path, members: list[tuple[str, int]], epochs: int, batch_size: int,
                patience: int | None = None, overrides: Sequence[str] = ()) -> None:
    """One real member folder per (model, seed), as ``pipeline-train -m`` would (completed ones are kept).

    ``patience``: stop a member when its validation log loss has not improved for that many epochs
    (``early_stopping_patience``), ``epochs`` being the most it may train: members as users train them.
    ``overrides``: more Hydra overrides of ``conf/train.yaml`` for every member (a recipe: ``aug.mixup=0.2``,
    ``callbacks=[default,ema]``), applied after the benchmark's own.
    """
    from omegaconf import open_dict

    from pipeline.cli.train import train_spec
    from pipeline.train.fit import train_member

    for model, seed in members:
        cfg = _compose("train", [
            "data=demo", f"data.root={comp}", "trainer=cpu", "logger=none", f"model={model}", f"seed={seed}",
            f"trainer.max_epochs={epochs}", f"data.batch_size={batch_size}", "trainer.enable_progress_bar=false",
            "data.num_workers=0",
            "data.check_images=false", f"paths.root={sweep}",
            *([f"early_stopping_patience={patience}"] if patience else []), *overrides,
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(sweep / cfg.member_name)
        if (Path(cfg.paths.output_dir) / "metrics.json").is_file():
            continue
        start = time.perf_counter()
        train_member(train_spec(cfg))
        log_progress(NAME, f"trained {cfg.member_name} in {time.perf_counter() - start:.0f} s")


def predict_sweep(sweep: Path, comp: Path, method: str, tta: str, policies: list[str]) -> Path:
    """``pipeline-predict`` with ``ensemble=<method>`` into ``<sweep>/predict-<method>``; returns that folder."""
    from pipeline.cli.predict import run as predict

    out = sweep / f"predict-{method}"
    cfg = _compose("predict", [
        "data=demo", f"data.root={comp}", f"members={sweep}", f"predict_dir={out}", f"ensemble={method}",
        f"tta={tta}", f"policies=[{','.join(policies)}]", "test_all_policies=true", "logger=none", "device=cpu",
        "num_workers=0", f"paths.root={sweep}",
    ])
    predict(cfg)
    return out


# --------------------------------------------------------------------------- scoring on the test labels


def _test_labels(comp: Path, ids: list[str], classes: list[str]) -> np.ndarray:
    solution = pd.read_csv(comp / "solution.csv", dtype=str).set_index("id")["label"]
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[solution[i]] for i in ids])


def read_test_probs(folder: Path, name: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The ids (sorted) and probabilities of one prediction file of a predict folder, rows in id order."""
    from pipeline.member.predictions import read_predictions

    ids, probs, _ = read_predictions(folder / name, classes)
    order = np.argsort(ids)
    return [ids[i] for i in order], probs[order]


def _chosen_policy(pr: Any, model: str) -> tuple[str, str]:
    """The policy key used for the baseline model's TTA row, and how it was chosen."""
    from pipeline.core.metrics import get_metric
    from pipeline.report.nested import nested_pick

    choice = (pr.info.get("tta_choice") or {}).get(model)
    if isinstance(choice, dict) and choice.get("chosen"):
        keys = [k for k, p in pr.policies.items() if pr.policy_names[k] == choice["chosen"] or p["name"] == choice["chosen"]]
        if keys:
            return keys[0], "tta=auto"
    keys = sorted(pr.policies, key=lambda k: int(pr.policies[k]["views"]))  # cheapest first wins ties
    pick = nested_pick([pr.oof[(model, k)] for k in keys], pr.labels, get_metric(pr.info["metric"]))
    return keys[pick.chosen], "nested OOF rule"


def score_run(comp: Path, dirs: dict[str, Path], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Test accuracy and RER [95% CI] over the best single model without TTA, for every row of one run."""
    from pipeline.core.metrics import get_metric, paired_bootstrap
    from pipeline.report.load import load_predict_run
    from pipeline.report.text import relative_error_reduction

    first = next(iter(dirs.values()))
    pr = load_predict_run(first)
    metric = get_metric(pr.info["metric"])
    none_key = next(k for k, p in pr.policies.items() if p["name"] == "none")
    scores = {m: metric(pr.labels, pr.oof[(m, none_key)]) for m in pr.models}
    base_model = max(scores, key=scores.__getitem__) if metric.greater_is_better else min(scores, key=scores.__getitem__)

    def test_probs(folder: Path, name: str) -> tuple[list[str], np.ndarray]:
        return read_test_probs(folder, name, pr.classes)

    from pipeline.core.io import safe_name

    ids, base = test_probs(first / "test", f"{safe_name(base_model)}__{none_key}.csv")
    labels = _test_labels(comp, ids, pr.classes)
    tta_key, how = _chosen_policy(pr, base_model)
    rows = {f"best single, no TTA ({base_model})": base,
            f"best single, chosen TTA ({pr.policy_names[tta_key]}; {how})":
                test_probs(first / "test", f"{safe_name(base_model)}__{tta_key}.csv")[1]}
    for method, folder in dirs.items():
        info = load_predict_run(folder).info
        chose = (info.get("ensemble_choice") or {}).get("chosen") if method == "auto" else None
        rows[f"ensemble={method}" + (f" (chose {chose})" if chose else "")] = test_probs(folder, "ensemble_test.csv")[1]
    base_score = metric(labels, base)
    out = []
    for name, probs in rows.items():
        boot = paired_bootstrap(labels, probs, base, metric, n_boot=n_boot, seed=seed)
        rer = relative_error_reduction(boot.diff, boot.low, boot.high, base_score, metric.greater_is_better)
        out.append({"row": name, "score": metric(labels, probs), "diff": boot.diff, "rer": rer,
                    "n_test": len(labels), "metric": metric.name})
    return out


# --------------------------------------------------------------------------- the benchmark


def _available(group: str, names: tuple[str, ...]) -> list[str]:
    from pipeline.cli import CONF_DIR

    return [n for n in names if (CONF_DIR / group / f"{n}.yaml").is_file()]


def _cell(r: dict[str, Any]) -> str:
    rer = r["rer"]
    tail = "" if rer is None else f", RER {100 * rer['rer']:+.1f}% [{100 * rer['low']:+.1f}, {100 * rer['high']:+.1f}]"
    return f"{r['score']:.4f}{tail}"


def _kind(row: str) -> str:
    """A row's name without what it chose in one run, so runs line up: ``ensemble=auto (chose x)`` → ``ensemble=auto``."""
    return row.split(" (", 1)[0]


def _detail(row: str) -> str:
    return f" ({row.split(' (', 1)[1]}" if " (" in row else ""


def seed_rows(runs: dict[int, list[dict[str, Any]]], kind_of: Callable[[str], str],
              cell: Callable[[dict[str, Any], str], str]) -> list[tuple[str, list[str], list[float]]]:
    """Rows of one data set lined up across seeds: each row kind (``kind_of`` its name), its ``cell(row, kind)`` per
    seed ("–" where a seed lacks it) and its RERs in percent."""
    seeds = sorted(runs)
    out = []
    for kind in dict.fromkeys(kind_of(r["row"]) for s in seeds for r in runs[s]):
        cells, rers = [], []
        for s in seeds:
            hit = next((r for r in runs[s] if kind_of(r["row"]) == kind), None)
            cells.append("–" if hit is None else cell(hit, kind))
            if hit is not None and hit["rer"] is not None:
                rers.append(100 * hit["rer"]["rer"])
        out.append((kind, cells, rers))
    return out


def dataset_table(name: str, runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """One table per data set: each row's test score and RER [CI] per seed, then the mean and spread of the RER."""
    seeds = sorted(runs)
    rows = []
    for kind, cells, rers in seed_rows(runs, _kind, lambda hit, _: _cell(hit) + _detail(hit["row"])):
        mean = f"{statistics.mean(rers):+.1f}%" if rers else "–"
        spread = (f"sd {statistics.stdev(rers):.1f}, {min(rers):+.1f} to {max(rers):+.1f}" if len(rers) > 1 else "–")
        rows.append([kind, *cells, mean, spread])
    metric = runs[seeds[0]][0]["metric"]
    return {"title": f"{name}: test {metric}, relative error reduction vs best single no-TTA [95% CI], per seed",
            "columns": ["row", *(f"seed {s}" for s in seeds), "mean RER", "spread of RER"], "rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every data set × seed: train, predict with every method, score on the test labels; the result JSON."""
    methods, policies = _available("ensemble", METHODS), _available("tta", POLICIES)
    tta = args.ensemble_tta or ("auto" if _available("tta", ("auto",)) else "ten_crop")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    tables, raw, started = [], {}, time.perf_counter()
    for name in args.datasets.split(","):
        comp = make_dataset(name, args.workdir / "uplift" / f"{name}-{args.n_train}-{args.n_test}", args.n_train,
                            args.n_test)
        runs: dict[int, list[dict[str, Any]]] = {}
        for seed in range(args.seeds):
            stop = f"-p{args.patience}" if args.patience else ""
            size = f"{name}-{args.n_train}-{args.n_test}-e{args.epochs}{stop}-b{args.batch_size}"
            sweep = args.workdir / "uplift" / size / f"seed{seed}"
            members = [(m, 100 * seed + i) for i, m in enumerate(models)]
            train_sweep(sweep, comp, members, args.epochs, args.batch_size, args.patience)
            if args.train_only:
                continue
            dirs = {method: predict_sweep(sweep, comp, method, tta, policies) for method in methods}
            runs[seed] = score_run(comp, dirs, args.n_boot, seed)
            log_progress(NAME, f"{name} seed {seed}: done ({(time.perf_counter() - started) / 60:.1f} min so far)")
        if args.train_only:
            continue
        tables.append(dataset_table(name, runs))
        raw[name] = runs
    minutes = (time.perf_counter() - started) / 60
    machine = machine_info()
    return {
        "title": f"Uplift: ensembles and TTA against the best single model, on hidden test labels ({machine['date']})",
        "what": __doc__,
        "params": {"datasets": args.datasets, "seeds": args.seeds, "models": models, "epochs": args.epochs,
                   "patience": args.patience, "batch_size": args.batch_size,
                   "n_train": args.n_train, "n_test": args.n_test, "methods": methods,
                   "policies": policies, "ensemble_tta": tta, "n_boot": args.n_boot},
        "tables": tables, "targets": [],
        "notes": [f"Run {machine['date']} on {machine['cpu']} ({machine['usable_cores']} usable cores, GPU: "
                  f"{machine['gpu']}), torch {machine['torch']} with {machine['torch_threads']} intra-op thread(s); "
                  f"wall time {minutes:.1f} min for the whole benchmark.",
                  "RER = (baseline error − row error) ÷ baseline error on the test set; the interval divides the "
                  "paired bootstrap interval of the accuracy difference by the baseline's test error.",
                  f"Methods run: {', '.join(methods)} (the conf/ensemble groups of this checkout); policies predicted: "
                  f"{', '.join(policies)}; ensemble rows use tta={tta}."],
        "runs": raw,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: run the uplift benchmark and save ``benchmarks/results/uplift.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {list(DATASETS)}")
    parser.add_argument("--seeds", type=int, default=3, help="sweeps per data set (member seeds 100·s + i)")
    parser.add_argument("--models", default="resnet10t,resnet10t,lenet5", help="one member per entry")
    parser.add_argument("--epochs", type=int, default=40, help="most epochs a member trains (with --patience)")
    parser.add_argument("--patience", type=int, default=4, help="early stopping on validation log loss; 0: train "
                        "every --epochs epoch (the old reduced runs)")
    parser.add_argument("--train-only", action="store_true", help="train the sweeps and stop (predict later)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (data.batch_size)")
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--ensemble-tta", default=None, help="submission policy of the ensemble rows (default: auto "
                        "when this checkout has tta=auto, else ten_crop)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--large", action="store_true", help="5 seeds, 4 epochs, 4,000 training images")
    parser.add_argument("--repeats", type=int, default=5, help="accepted for run_all; unused (seeds repeat here)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; accepted: {list(DATASETS)}")
    if args.large:
        args.seeds, args.epochs, args.n_train = max(args.seeds, 5), max(args.epochs, 4), max(args.n_train, 4000)
    import torch

    torch.set_num_threads(args.threads)
    quiet()
    result = run(args)
    if not args.train_only:
        save_result(NAME, result, args.json)


if __name__ == "__main__":
    main()
