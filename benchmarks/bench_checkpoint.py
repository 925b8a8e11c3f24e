"""Benchmark 11: how optimistic a member's OOF rows are about its own checkpoint (issue 19, part 2).

A member's ``checkpoints/best.ckpt`` is chosen by its monitor (``val/log_loss``) on its validation rows,
which are also its out-of-fold (OOF) rows: the OOF score of ``best`` is a selected maximum, while
``checkpoints/last.ckpt`` (the end of training) was not chosen on them. For every member of the uplift
sweeps (:mod:`benchmarks.bench_uplift`: 4 data sets × 3 seeds × 3 members, trained until the validation
log loss stopped improving for 4 epochs, at most 40), this predicts the member's validation rows and the
hidden test rows with both files through the library (:func:`pipeline.member.folder.at_checkpoint` +
:func:`pipeline.predict.runner.predict_members`, policy ``none``, CPU) and reports, per data set:

* OOF and test accuracy and log loss of best and of last;
* the gain of best over last (accuracy: best − last; log loss: last − best, so a positive gain means best
  is better) on the OOF rows and on the test rows, and the selection bias = OOF gain − test gain;
* a paired bootstrap (test rows resampled, the same rows for every member of the data set) of the mean
  test gain, and a bootstrap of the bias (OOF and test rows resampled independently);
* per member, the paired-bootstrap 95 % interval of the test difference, and how often the OOF-chosen
  checkpoint (best) is worse on the test rows.

The uplift sweeps were trained with Lightning 2.6, whose checkpoint callback writes ``last.ckpt`` only when it
writes ``best.ckpt``: there both files hold the best epoch (``best_is_last`` counts them), so the bias there is
zero by construction. ``--true-last`` (default: digits and photos, 6 seeds) therefore also trains one ``lenet5``
member per seed, as the uplift sweeps train theirs (early stopping, patience 4, at most 40 epochs, under a
minute each on 2 cores), with one extra callback that writes ``last.ckpt`` after every epoch
(:func:`train_true_last`), and measures those the same way.

    python -m benchmarks.bench_checkpoint                   # every sweep of the uplift benchmark in --workdir
    python -m benchmarks.bench_checkpoint --true-last        # the uplift sweeps only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_uplift import DATASETS
from benchmarks.common import DEFAULT_WORKDIR, log_progress, quiet, save_result

__all__ = ["score_member", "evaluate_sweep", "main"]

NAME = "checkpoint"
EPS = 1e-15


def _row_losses(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: 1 when the arg-max is right, and the log loss (probabilities renormalised, clipped like sklearn)."""
    p = np.clip(probs / probs.sum(axis=1, keepdims=True), EPS, 1 - EPS)
    return (p.argmax(axis=1) == labels).astype(float), -np.log(p[np.arange(len(labels)), labels])


def _predict(members: list[Any], table: Any, split: str, rows: dict[str, np.ndarray] | None, cache: Path,
             ) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each member's predictions (ids sorted) under policy ``none`` through the library's runner."""
    from pipeline.member.predictions import read_predictions
    from pipeline.predict.plan import policy_key
    from pipeline.predict.runner import predict_members
    from pipeline.predict.spec import PredictOptions
    from pipeline.predict.tta import create_policy

    none = create_policy("none")
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=256, prediction_cache_dir=str(cache))
    files = predict_members(members, table, split, {policy_key(none): none}, opts, rows, cache)
    out = {}
    classes = members[0].manifest.classes
    for (name, _), path in files.items():
        ids, probs, _ = read_predictions(path, classes)
        order = np.argsort(ids)
        out[name] = ([ids[i] for i in order], probs[order])
    return out


def _validation_rows(members: list[Any], ids: list[str]) -> dict[str, np.ndarray]:
    pos = {i: r for r, i in enumerate(ids)}
    out = {}
    for m in members:
        folds = pd.read_csv(m.path / "folds.csv", dtype=str)
        out[m.name] = np.array(sorted(pos[i] for i in folds.loc[folds["fold"] == str(m.manifest.fold), "id"]))
    return out


def _labels(table_ids: list[str], table_labels: np.ndarray, ids: list[str]) -> np.ndarray:
    pos = {i: r for r, i in enumerate(table_ids)}
    return np.asarray(table_labels)[[pos[i] for i in ids]].astype(int)


def _scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    right, loss = _row_losses(labels, probs)
    return {"accuracy": float(right.mean()), "log_loss": float(loss.mean())}


def score_member(oof: dict[str, tuple[np.ndarray, np.ndarray]], test: dict[str, tuple[np.ndarray, np.ndarray]],
                 oof_labels: np.ndarray, test_labels: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Scores of best and last on OOF and test rows, gains of best over last, the bias and the test interval."""
    from pipeline.core.metrics import paired_bootstrap

    out: dict[str, Any] = {}
    for where, preds, labels in (("oof", oof, oof_labels), ("test", test, test_labels)):
        for which in ("best", "last"):
            out[f"{where}_{which}"] = _scores(labels, preds[which][1])
    for metric, sign in (("accuracy", 1.0), ("log_loss", -1.0)):
        for where in ("oof", "test"):
            out[f"{where}_gain_{metric}"] = sign * (out[f"{where}_best"][metric] - out[f"{where}_last"][metric])
        out[f"bias_{metric}"] = out[f"oof_gain_{metric}"] - out[f"test_gain_{metric}"]
        boot = paired_bootstrap(test_labels, test["best"][1], test["last"][1], metric, n_boot=n_boot, seed=seed)
        out[f"test_diff_{metric}"] = {"diff": boot.diff, "low": boot.low, "high": boot.high}
    out["best_worse_on_test_log_loss"] = out["test_gain_log_loss"] < 0
    out["best_worse_on_test_accuracy"] = out["test_gain_accuracy"] < 0
    return out


def evaluate_sweep(sweep: Path, comp: Path, cache: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Every member of one sweep with best.ckpt and last.ckpt: per-member scores and per-row correctness/loss."""
    from pipeline.data.spec import DataSpec
    from pipeline.data.tables import read_test_table, read_train_table
    from pipeline.member.cache import checkpoint_hash
    from pipeline.member.folder import at_checkpoint, find_members
    from pipeline.predict.targets import members_task

    members, _ = find_members(sweep)
    classes = list(members_task(members).columns)
    spec = DataSpec(root=str(comp), classes=classes, task="multiclass")
    train, test = read_train_table(spec), read_test_table(spec, classes)
    rows = _validation_rows(members, train.ids)
    preds = {}
    for which in ("best", "last"):
        chosen = at_checkpoint(members, which)
        preds[which] = (_predict(chosen, train, "val", rows, cache), _predict(chosen, test, "test", None, cache),
                        {m.name: checkpoint_hash(m) for m in chosen})
    solution = pd.read_csv(comp / "solution.csv", dtype=str).set_index("id")["label"]
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for m in members:
        oof = {w: preds[w][0][m.name] for w in preds}
        tst = {w: preds[w][1][m.name] for w in preds}
        oof_labels = _labels(train.ids, train.labels, oof["best"][0])
        test_labels = np.array([index[solution[i]] for i in tst["best"][0]])
        row = score_member(oof, tst, oof_labels, test_labels, n_boot, seed)
        row["same_weights"] = preds["best"][2][m.name] == preds["last"][2][m.name]
        row["epochs"] = _epochs(m.path)
        row["_rows"] = {where: {w: _row_losses(lab, p[w][1]) for w in ("best", "last")}
                        for where, p, lab in (("oof", oof, oof_labels), ("test", tst, test_labels))}
        out[m.name] = row
    return out


def _epochs(folder: Path) -> int | None:
    import json

    path = folder / "metrics.json"
    return json.loads(path.read_text()).get("epochs") if path.is_file() else None


def _pooled(members: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Mean over members of the test gain (paired bootstrap of the shared test rows) and of the bias."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for k, metric in enumerate(("accuracy", "log_loss")):
        sign = 1.0 if k == 0 else -1.0
        # per member, per row: gain of best over last (accuracy: right_best - right_last; loss: last - best)
        test = np.stack([sign * (m["_rows"]["test"]["best"][k] - m["_rows"]["test"]["last"][k]) for m in members])
        oofs = [sign * (m["_rows"]["oof"]["best"][k] - m["_rows"]["oof"]["last"][k]) for m in members]
        n_test = test.shape[1]
        boot_test, boot_bias = np.empty(n_boot), np.empty(n_boot)
        for b in range(n_boot):
            t = test[:, rng.integers(0, n_test, n_test)].mean(axis=1)
            o = np.array([g[rng.integers(0, len(g), len(g))].mean() for g in oofs])
            boot_test[b], boot_bias[b] = t.mean(), (o - t).mean()
        mean_test = float(test.mean(axis=1).mean())
        mean_oof = float(np.mean([g.mean() for g in oofs]))
        out[metric] = {
            "oof_gain": mean_oof, "test_gain": mean_test, "bias": mean_oof - mean_test,
            "test_gain_ci": [float(np.quantile(boot_test, 0.025)), float(np.quantile(boot_test, 0.975))],
            "bias_ci": [float(np.quantile(boot_bias, 0.025)), float(np.quantile(boot_bias, 0.975))],
        }
    return out


def dataset_summary(rows: dict[str, dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Means over a data set's members, the pooled intervals, and the counts."""
    members = list(rows.values())
    differ = [m for m in members if not m["same_weights"]]
    out: dict[str, Any] = {"members": len(members), "best_is_last": len(members) - len(differ)}
    for where in ("oof", "test"):
        for which in ("best", "last"):
            for metric in ("accuracy", "log_loss"):
                out[f"{where}_{which}_{metric}"] = statistics.fmean(m[f"{where}_{which}"][metric] for m in members)
    out["pooled"] = _pooled(members, n_boot, seed) if members else None
    for metric in ("accuracy", "log_loss"):
        out[f"best_worse_on_test_{metric}"] = sum(m[f"best_worse_on_test_{metric}"] for m in differ)
        out[f"best_significantly_worse_{metric}"] = sum(_significant(m, metric, worse=True) for m in differ)
        out[f"best_significantly_better_{metric}"] = sum(_significant(m, metric, worse=False) for m in differ)
    return out


def _significant(m: dict[str, Any], metric: str, worse: bool) -> bool:
    """Whether best's test difference to last is significant (95 %), in the direction asked."""
    d = m[f"test_diff_{metric}"]
    best_better = d["low"] > 0 if metric == "accuracy" else d["high"] < 0
    best_worse = d["high"] < 0 if metric == "accuracy" else d["low"] > 0
    return best_worse if worse else best_better


def train_true_last(sweep: Path, comp: Path, seed: int, epochs: int, patience: int) -> None:
    """A ``lenet5`` member (seed ``100·seed + 2``, as in the uplift sweeps) whose ``last.ckpt`` is the end of training.

    With Lightning 2.6 the member folder's checkpoint callback (``save_last=True``, ``save_top_k=1``, a
    monitor) writes ``last.ckpt`` only when it writes ``best.ckpt``, so both files hold the best epoch. An
    extra checkpoint callback without a monitor, named ``last``, overwrites ``last.ckpt`` after every
    epoch here; nothing else about training changes.
    """
    from omegaconf import open_dict

    from benchmarks.bench_uplift import _compose
    from pipeline.cli.train import train_spec
    from pipeline.train.fit import train_member

    cfg = _compose("train", [
        "data=demo", f"data.root={comp}", "trainer=cpu", "logger=none", "model=lenet5", f"seed={100 * seed + 2}",
        f"trainer.max_epochs={epochs}", "data.batch_size=32", "trainer.enable_progress_bar=false",
        "data.num_workers=0", "data.check_images=false", f"paths.root={sweep}", f"early_stopping_patience={patience}",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(sweep / cfg.member_name)
        cfg.callbacks.end_of_training = {
            "_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "dirpath": f"{cfg.paths.output_dir}/checkpoints",
            "filename": "last", "monitor": None, "save_top_k": 1, "enable_version_counter": False}
    if (Path(cfg.paths.output_dir) / "metrics.json").is_file():
        return
    train_member(train_spec(cfg))


def _measure(args: argparse.Namespace, datasets: list[str], true_last: bool, cache: Path) -> dict[str, Any]:
    """Per data set: the summary over every member of its seeds, and each member's row."""
    per_dataset: dict[str, Any] = {}
    for name in datasets:
        size = f"{name}-{args.n_train}-{args.n_test}"
        comp = args.workdir / "uplift" / size
        rows: dict[str, dict[str, Any]] = {}
        for seed in range(args.true_last_seeds if true_last else args.seeds):
            sweep = args.workdir / "uplift" / f"{size}-{args.suffix}" / f"seed{seed}"
            if true_last:
                sweep = args.workdir / NAME / f"{size}-lenet5-e{args.epochs}-p{args.patience}" / f"seed{seed}"
                train_true_last(sweep, comp, seed, args.epochs, args.patience)
            if not sweep.is_dir():
                log_progress(NAME, f"no sweep {sweep}; skipped")
                continue
            found = evaluate_sweep(sweep, comp, cache, args.n_boot, seed)
            rows |= {f"seed{seed}/{k}": v for k, v in found.items()}
            log_progress(NAME, f"{name} seed {seed}: {len(found)} members")
        if rows:
            per_dataset[name] = {"summary": dataset_summary(rows, args.n_boot, 0),
                                 "members": {k: {f: v for f, v in r.items() if f != "_rows"} for k, r in rows.items()}}
    return per_dataset


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The uplift sweeps as they are, then (``--true-last``) lenet5 members whose last.ckpt is the last epoch."""
    cache = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))  # never the shared members' own predictions/
    return {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "uplift_sweeps": _measure(args, args.datasets, False, cache),
            "true_last": _measure(args, args.true_last, True, cache)}


def print_table(title: str, datasets: dict[str, Any]) -> None:
    print(f"\n{title}\n")
    print("| data set | members (best=last) | OOF acc best / last | test acc best / last | OOF LL best / last | "
          "test LL best / last | bias acc (pts) [95%] | bias LL [95%] | test LL gain [95%] | best worse on test (LL, acc) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, d in datasets.items():
        s, p = d["summary"], d["summary"]["pooled"]
        a, ll = p["accuracy"], p["log_loss"]
        print(f"| {name} | {s['members']} ({s['best_is_last']}) | {s['oof_best_accuracy']:.4f} / {s['oof_last_accuracy']:.4f} "
              f"| {s['test_best_accuracy']:.4f} / {s['test_last_accuracy']:.4f} | {s['oof_best_log_loss']:.4f} / "
              f"{s['oof_last_log_loss']:.4f} | {s['test_best_log_loss']:.4f} / {s['test_last_log_loss']:.4f} "
              f"| {100 * a['bias']:+.2f} [{100 * a['bias_ci'][0]:+.2f}, {100 * a['bias_ci'][1]:+.2f}] "
              f"| {ll['bias']:+.4f} [{ll['bias_ci'][0]:+.4f}, {ll['bias_ci'][1]:+.4f}] "
              f"| {ll['test_gain']:+.4f} [{ll['test_gain_ci'][0]:+.4f}, {ll['test_gain_ci'][1]:+.4f}] "
              f"| {s['best_worse_on_test_log_loss']}, {s['best_worse_on_test_accuracy']} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--suffix", default="e40-p4-b32", help="the sweeps' folder suffix (epochs, patience, batch)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--true-last", nargs="*", default=["digits", "photos"],
                        help="data sets where a lenet5 member per seed is trained (under a minute each on 2 cores) "
                             "with a last.ckpt from its last epoch (train_true_last) into <workdir>/checkpoint/; "
                             "none: skip")
    parser.add_argument("--true-last-seeds", type=int, default=6, help="--true-last: members per data set")
    parser.add_argument("--epochs", type=int, default=40, help="--true-last: most epochs")
    parser.add_argument("--patience", type=int, default=4, help="--true-last: early-stopping patience")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/checkpoint.json)")
    args = parser.parse_args(argv)
    quiet()
    result = run(args)
    save_result(NAME, result, args.out)
    print_table("Uplift sweeps (best.ckpt vs last.ckpt as training left them)", result["uplift_sweeps"])
    print_table("lenet5 members whose last.ckpt is the end of training", result["true_last"])


if __name__ == "__main__":
    main()
