"""``pipeline-predict``: member folders → TTA predictions → ensemble → a validated submission file.

Data flows once: every image is decoded and resized once per batch, moved to the device as ``uint8``,
and that batch feeds every member and every TTA policy. Per-member predictions stream to the member's
``predictions/`` cache (keyed by split, policy and checkpoint hash), so a re-run recomputes nothing.

Then members are grouped into *models* (one config across its folds): a model's validation
predictions are its members' concatenated out-of-fold rows, and its test prediction is the mean of its
fold members. Models are merged into the ensemble with equal, given or Caruana-fitted weights; the
weights are fitted on OOF rows only, never on the test rows.

Outputs, in ``<sweep>/predict/``::

    submission.csv        the competition file, validated and written atomically
    ensemble_test.csv     the ensemble's test probabilities (submission policy)
    oof/<model>__<policy>.csv, test/<model>__<policy>.csv   model-level predictions
    predict.json          members, skipped folders, policies, weights, timings, leaderboard score
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from pipeline.augment import normalize_batch, transform_from_dict
from pipeline.cache import cache_for_member
from pipeline.config import CONF_DIR, register, to_container, to_dataclass
from pipeline.data import DataSpec, ImageDataset, ImageTable, read_test_table, read_train_table
from pipeline.ensemble import caruana_select, merge_members, resolve_weights
from pipeline.loggers import LoggerSpec, init_wandb
from pipeline.member import Member, MemberError, file_hash, find_members, load_state_dict
from pipeline.metrics import get_metric
from pipeline.models import create_model
from pipeline.predictions import PROB_PREFIX, PredictionWriter, read_predictions, write_predictions
from pipeline.submission import (
    SubmissionFormat,
    build_submission,
    check_sample_ids,
    format_from_config,
    infer_format,
    read_csv_as_text,
    write_submission,
)
from pipeline.tta import TTAPolicy, create_policy, predict_with_tta, views_per_image
from pipeline.utils import read_json, safe_name, write_json

__all__ = [
    "PredictOptions",
    "EnsembleOptions",
    "SubmissionOptions",
    "policy_key",
    "load_member_model",
    "predict_members",
    "predict",
]

log = logging.getLogger(__name__)
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PredictOptions:
    """How to run the models (the top-level keys of ``conf/predict.yaml``)."""

    device: str = "auto"
    precision: str = "32"
    channels_last: bool = True
    compile: bool = False
    batch_size: int = 256
    num_workers: int = 2
    chunk_size: int | None = 512
    member_chunk_size: dict[str, int] = field(default_factory=dict)
    view_reduce: str = "prob_mean"

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class EnsembleOptions:
    """The ``ensemble`` config group."""

    method: str = "prob_mean"
    weights: str = "equal"
    given_weights: list[float] | None = None
    caruana_rounds: int = 50
    fit_metric: str = "log_loss"


@dataclass
class SubmissionOptions:
    """The ``submission`` config node: format from the sample unless ``kind`` is set."""

    filename: str = "submission.csv"
    kind: str | None = None
    id_column: str | None = None
    label_column: str | None = None
    label_as: str | None = None


def policy_key(policy: TTAPolicy) -> str:
    """File-name key of a policy: its name plus a hash of all its settings."""
    digest = hashlib.sha256(json.dumps(asdict(policy), sort_keys=True).encode()).hexdigest()[:8]
    return f"{policy.name}.{digest}"


# --------------------------------------------------------------------------- members


def load_member_model(member: Member, opts: PredictOptions) -> nn.Module:
    """Rebuild a member's network, load its weights (``weights_only``), and ready it for inference."""
    m = member.manifest
    model = create_model(m.model_name, num_classes=m.num_classes, in_chans=m.in_chans, **m.model_kwargs)
    state = load_state_dict(member.checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MemberError(
            f"{member.checkpoint} does not fit model '{m.model_name}': missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval().to(opts.torch_device())
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if opts.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


@dataclass
class _Job:
    """One member's predictions still to compute for one split: a writer per policy."""

    member: Member
    model: nn.Module
    rows: np.ndarray | None  # table rows this member predicts (None: all)
    writers: dict[str, PredictionWriter]
    seconds: dict[str, float]


def _cache_path(member: Member, split: str, key: str, reduce: str, ckpt_hash: str) -> Path:
    return member.path / "predictions" / f"{split}-{key}-{reduce}-{ckpt_hash}.csv"


def _autocast(device: torch.device, precision: str) -> Any:
    if precision not in PRECISIONS:
        raise ValueError(f"precision='{precision}' is not one of {list(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _run_batch(job: _Job, images: torch.Tensor, batch: dict[str, Any], table: ImageTable,
               policies: dict[str, TTAPolicy], opts: PredictOptions) -> None:
    index = batch["index"].numpy()
    keep = np.ones(len(index), dtype=bool) if job.rows is None else np.isin(index, job.rows)
    if not keep.any():
        return
    m = job.member.manifest
    x = normalize_batch(images[torch.as_tensor(keep, device=images.device)], m.mean, m.std)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ids = [table.ids[i] for i in index[keep]]
    labels = None if table.labels is None else table.labels[index[keep]]
    chunk = opts.member_chunk_size.get(m.name, opts.member_chunk_size.get(m.model_group, opts.chunk_size))
    for key, writer in job.writers.items():
        start = time.perf_counter()
        with _autocast(x.device, opts.precision):
            probs = predict_with_tta(job.model, x, policies[key], chunk_size=chunk, method=opts.view_reduce)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        job.seconds[key] += time.perf_counter() - start
        writer.write(ids, probs.float().cpu().numpy(), labels)


def predict_members(
    members: Sequence[Member], table: ImageTable, split: str, policies: dict[str, TTAPolicy],
    opts: PredictOptions, rows: dict[str, np.ndarray] | None = None,
) -> dict[tuple[str, str], Path]:
    """Predict ``table`` with every member under every policy; return ``(member, policy key) → file``.

    The table is decoded once; members whose cache already holds a (split, policy, checkpoint) file
    are not run at all. ``rows`` limits a member to some table rows (its own validation fold).
    Timings (model compute seconds per 1,000 images) are saved beside each cache file.
    """
    out: dict[tuple[str, str], Path] = {}
    jobs: list[_Job] = []
    for member in members:
        todo = {}
        ckpt_hash = file_hash(member.checkpoint)  # hashing a large checkpoint once, not once per policy
        for key in policies:
            path = _cache_path(member, split, key, opts.view_reduce, ckpt_hash)
            out[(member.name, key)] = path
            if not path.is_file():
                todo[key] = PredictionWriter(path, member.manifest.classes, with_labels=table.labels is not None)
        if todo:
            model = load_member_model(member, opts)
            jobs.append(_Job(member, model, None if rows is None else rows[member.name], todo, dict.fromkeys(todo, 0.0)))
    if not jobs:
        return out
    try:
        _stream(jobs, table, policies, opts)
    except BaseException:
        for job in jobs:
            for w in job.writers.values():
                w.abort()
        raise
    for job in jobs:
        for key, writer in job.writers.items():
            path = writer.close()
            n = max(writer.rows, 1)
            write_json(path.with_suffix(".json"), {
                "policy": asdict(policies[key]), "views": views_per_image(policies[key]), "rows": writer.rows,
                "seconds": job.seconds[key], "seconds_per_1000": 1000.0 * job.seconds[key] / n,
                "device": str(opts.torch_device()), "precision": opts.precision,
            })
    return out


def _stream(jobs: list[_Job], table: ImageTable, policies: dict[str, TTAPolicy], opts: PredictOptions) -> None:
    """The one pass over the data: decode once, feed every job."""
    first = jobs[0].member
    eval_tf = read_json(first.path / "eval_transform.json")
    transform = transform_from_dict(eval_tf)
    for job in jobs[1:]:
        if read_json(job.member.path / "eval_transform.json") != eval_tf or \
                job.member.manifest.in_chans != first.manifest.in_chans:
            raise MemberError(
                f"Members {first.name} and {job.member.name} need different eval transforms or input channels; "
                "predict them in separate runs (members=...)."
            )
    needed = np.unique(np.concatenate([j.rows for j in jobs])) if all(j.rows is not None for j in jobs) else None
    sub = table if needed is None else table.subset(needed)
    cache = cache_for_member(first.path, table, first.manifest.in_chans, opts.num_workers)
    ds = ImageDataset(sub, transform, first.manifest.in_chans, cache)
    loader = DataLoader(ds, batch_size=opts.batch_size, num_workers=opts.num_workers, shuffle=False,
                        pin_memory=opts.torch_device().type == "cuda")
    device = opts.torch_device()
    for job in jobs:  # rows are positions in ``sub`` from here on
        if job.rows is not None and needed is not None:
            job.rows = np.flatnonzero(np.isin(needed, job.rows))
    with torch.inference_mode():
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            for job in jobs:
                _run_batch(job, images, batch, sub, policies, opts)


# --------------------------------------------------------------------------- models and ensemble


def _models(members: Sequence[Member]) -> dict[str, list[Member]]:
    """Group members into models: the same config across its folds."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        groups.setdefault(m.manifest.model_group or m.name, []).append(m)
    return groups


def _iter_chunks(paths: Sequence[Path], classes: Sequence[str], chunk_rows: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Walk several same-order prediction files side by side, ``chunk_rows`` at a time."""
    readers = [pd.read_csv(p, dtype={"id": str}, chunksize=chunk_rows) for p in paths]
    cols = [PROB_PREFIX + c for c in classes]
    for frames in zip(*readers):
        ids = frames[0]["id"].tolist()
        for p, f in zip(paths, frames):
            if f["id"].tolist() != ids:
                raise ValueError(f"{p}: rows are not in the same order as {paths[0]}")
        yield ids, [f[cols].to_numpy(np.float64) for f in frames]


def merge_files(paths: Sequence[Path], out: Path, classes: Sequence[str], weights: Sequence[float] | None,
                method: str, chunk_rows: int = 50_000) -> Path:
    """Merge same-order prediction files chunk by chunk (memory bounded by the chunk)."""
    with PredictionWriter(out, classes) as writer:
        for ids, probs in _iter_chunks(paths, classes, chunk_rows):
            writer.write(ids, merge_members(probs, weights=weights, method=method).numpy())
    return out


def model_oof(member_files: dict[str, Path], classes: Sequence[str], order: Sequence[str]) -> pd.DataFrame:
    """A model's out-of-fold predictions: its members' validation rows, concatenated, in ``order``."""
    frames = []
    for path in member_files.values():
        ids, probs, labels = read_predictions(path, classes)
        frame = pd.DataFrame(probs, columns=[PROB_PREFIX + c for c in classes])
        frame.insert(0, "id", ids)
        frame.insert(1, "label", labels)
        frames.append(frame)
    oof = pd.concat(frames)
    if oof["id"].duplicated().any():
        raise ValueError(f"Members {list(member_files)} overlap in their validation rows; they are not folds of one model.")
    rank = {i: r for r, i in enumerate(order)}
    return oof.assign(_r=oof["id"].map(rank)).sort_values("_r").drop(columns="_r").reset_index(drop=True)


def fit_weights(oofs: dict[str, pd.DataFrame], opts: EnsembleOptions, metric: str) -> np.ndarray:
    """Ensemble weights over models from their OOF predictions (equal, given, or Caruana)."""
    names = list(oofs)
    fitted = None
    if opts.weights in ("caruana", "fitted"):
        ids = [set(f["id"]) for f in oofs.values()]
        if any(s != ids[0] for s in ids):
            raise ValueError(f"Models {names} have OOF predictions on different rows; Caruana weights need the same rows.")
        probs = [f.filter(like=PROB_PREFIX).to_numpy() for f in oofs.values()]
        fitted = caruana_select(probs, oofs[names[0]]["label"].to_numpy(), n_rounds=opts.caruana_rounds,
                                metric=get_metric(opts.fit_metric or metric), method=opts.method)
    return resolve_weights(opts.weights, len(names), opts.given_weights, fitted)


# --------------------------------------------------------------------------- the stage


def _test_table(spec: DataSpec, classes: Sequence[str]) -> tuple[ImageTable, list[str] | None]:
    """The test images, in the sample submission's order when there is one (and its ids)."""
    table = read_test_table(spec, classes)
    if not spec.sample_submission:
        return table, None
    sample_path = spec.root_path / spec.sample_submission
    if not sample_path.is_file():
        raise FileNotFoundError(f"Sample submission {sample_path} does not exist (config key data.sample_submission).")
    sample = read_csv_as_text(sample_path)
    sample_ids = sample.iloc[:, 0].tolist() if spec.id_col not in sample.columns else sample[spec.id_col].tolist()
    check_sample_ids(sample_ids, table.ids, sample_path)
    pos = {i: r for r, i in enumerate(table.ids)}
    return table.subset(np.array([pos[i] for i in sample_ids])), sample_ids


def _submission_format(spec: DataSpec, opts: SubmissionOptions, classes: Sequence[str]) -> SubmissionFormat:
    sample = spec.root_path / spec.sample_submission if spec.sample_submission else None
    if opts.kind is None:
        if sample is None:
            raise ValueError("No data.sample_submission to infer the format from: set submission.kind (label|probabilities).")
        return infer_format(sample, classes, id_column=opts.id_column, label_as=opts.label_as)  # type: ignore[arg-type]
    return format_from_config(opts.kind, opts.id_column or spec.id_col, opts.label_column, opts.label_as,
                              classes, sample_csv=sample)


def _validation_rows(members: Sequence[Member], train: ImageTable) -> dict[str, np.ndarray]:
    """Each member's own validation rows (from its saved folds), as positions in the train table."""
    pos = {i: r for r, i in enumerate(train.ids)}
    rows = {}
    for m in members:
        folds = pd.read_csv(m.path / "folds.csv", dtype={"id": str})
        val_ids = folds.loc[folds["fold"] == m.manifest.fold, "id"]
        missing = [i for i in val_ids if i not in pos]
        if missing:
            raise MemberError(f"{m.path}/folds.csv lists ids not in the training data, e.g. {missing[:3]}.")
        rows[m.name] = np.array(sorted(pos[i] for i in val_ids))
    return rows


def _solution_score(
    spec: DataSpec, ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], metric: str
) -> dict[str, Any] | None:
    """Leaderboard score against the competition's solution file, when one is available (the demo)."""
    if not spec.solution or not (spec.root_path / spec.solution).is_file():
        return None
    sol = read_csv_as_text(spec.root_path / spec.solution).set_index(spec.id_col)[spec.label_col]
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[sol[i]] for i in ids])
    return {"metric": metric, "score": float(get_metric(metric)(labels, probs)), "rows": len(ids),
            "note": "leaderboard score on the hidden solution file, not validation"}


def predict(
    members_spec: str | Sequence[str], spec: DataSpec, policies: Sequence[TTAPolicy], submit_policy: TTAPolicy,
    out_dir: Path, opts: PredictOptions, ens: EnsembleOptions, sub: SubmissionOptions, metric: str = "accuracy",
) -> dict[str, Any]:
    """Run the whole inference stage; return the summary also written to ``predict.json``."""
    members, skipped = find_members(members_spec)
    for folder, why in skipped.items():
        log.warning("Skipping %s: %s", folder, why)
    classes = members[0].manifest.classes
    all_policies = {policy_key(p): p for p in [*policies, submit_policy]}
    submit_key = policy_key(submit_policy)
    models = _models(members)
    log.info("Predicting %d member(s) in %d model(s) under %s", len(members), len(models), list(all_policies))

    # 1. validation (OOF) rows of every member, every policy, for weights and the report
    train = read_train_table(DataSpec(**{**asdict(spec), "classes": classes}))
    val_files = predict_members(members, train, "val", all_policies, opts, _validation_rows(members, train))
    # 2. the test set, once, for every member and policy
    test, sample_ids = _test_table(spec, classes)
    test_tag = "test-" + hashlib.sha256("\n".join(map(str, test.paths)).encode()).hexdigest()[:10]
    test_files = predict_members(members, test, test_tag, all_policies, opts)

    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "members": {m.name: str(m.path) for m in members}, "skipped": skipped,
        "models": {g: [m.name for m in ms] for g, ms in models.items()},
        "policies": {k: {**asdict(p), "views": views_per_image(p)} for k, p in all_policies.items()},
        "submission_policy": submit_key, "ensemble": asdict(ens), "metric": metric, "weights": {}, "timings": {},
        "classes": classes, "n_test": len(test), "options": asdict(opts),
    }
    for key in all_policies:
        oofs = {}
        for g, ms in models.items():
            name = f"{safe_name(g)}__{key}"
            oof = model_oof({m.name: val_files[(m.name, key)] for m in ms}, classes, train.ids)
            oof_path = out_dir / "oof" / f"{name}.csv"
            oof_probs = oof.filter(like=PROB_PREFIX).to_numpy()
            write_predictions(oof_path, oof["id"].tolist(), oof_probs, classes, oof["label"].tolist())
            merge_files([test_files[(m.name, key)] for m in ms], out_dir / "test" / f"{name}.csv", classes, None, ens.method)
            oofs[g] = oof
            timing = [read_json(test_files[(m.name, key)].with_suffix(".json")) for m in ms]
            summary["timings"].setdefault(g, {})[key] = {
                "seconds_per_1000": sum(t["seconds_per_1000"] for t in timing),
                "forward_passes_per_image": sum(t["views"] for t in timing),
            }
        summary["weights"][key] = dict(zip(models, fit_weights(oofs, ens, metric).tolist()))

    weights = list(summary["weights"][submit_key].values())
    ens_path = merge_files([out_dir / "test" / f"{safe_name(g)}__{submit_key}.csv" for g in models],
                           out_dir / "ensemble_test.csv", classes, weights, ens.method)
    ids, probs, _ = read_predictions(ens_path, classes)
    fmt = _submission_format(spec, sub, classes)
    frame = build_submission(ids, probs, classes, fmt, sample_ids)
    summary["submission"] = str(write_submission(frame, out_dir / sub.filename, fmt, sample_ids or test.ids, classes))
    summary["leaderboard"] = _solution_score(spec, ids, probs, classes, metric)
    write_json(out_dir / "predict.json", summary)
    return summary


# --------------------------------------------------------------------------- CLI


def _policy_from_cfg(node: Any, crop_size: int) -> TTAPolicy:
    kw = {k: v for k, v in to_container(node).items() if k not in ("name", "crop_size", "reduce", "chunk_size")}
    return create_policy(node["name"], crop_size=int(node.get("crop_size") or crop_size), **kw)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Config → plain options → :func:`predict`, inside one W&B run (``job_type=predict``)."""
    spec = to_dataclass(DataSpec, cfg.data)
    submit = _policy_from_cfg(cfg.tta, spec.crop_size)
    extra = [create_policy(name, crop_size=spec.crop_size) for name in cfg.policies if name != submit.name]
    opts = to_dataclass(PredictOptions, cfg)
    opts.view_reduce = str(cfg.tta.get("reduce", "prob_mean"))
    opts.chunk_size = cfg.tta.get("chunk_size") or opts.chunk_size
    out_dir = Path(cfg.predict_dir)
    logger = to_dataclass(LoggerSpec, cfg.logger)
    run = None
    try:
        if logger.kind == "wandb":
            run = init_wandb(logger, out_dir, "predict", f"{cfg.experiment_name}/{cfg.sweep_name}", "predict", to_container(cfg))
        summary = predict(
            to_container(cfg.members), spec, extra, submit, out_dir, opts,
            to_dataclass(EnsembleOptions, cfg.ensemble), to_dataclass(SubmissionOptions, cfg.submission), cfg.metric,
        )
        if run is not None:
            _log_wandb(run, summary)
            # The report stage logs its table and plots into this same run.
            summary.update(wandb_run_id=run.id, wandb_dir=str(out_dir), wandb_project=logger.project,
                           wandb_mode=run.settings.mode)
            write_json(out_dir / "predict.json", summary)
    finally:
        if run is not None:
            run.finish()
    lb = summary["leaderboard"]
    print(f"Submission written: {summary['submission']}")
    if lb:
        print(f"Demo leaderboard ({lb['metric']}, {lb['rows']} test images): {lb['score']:.4f}")
    return summary


def _log_wandb(run: Any, summary: dict[str, Any]) -> None:
    import wandb

    run.config.update({"members": list(summary["members"]), "policy": summary["submission_policy"],
                       "weights": summary["weights"][summary["submission_policy"]]}, allow_val_change=True)
    if summary["leaderboard"]:
        run.summary["leaderboard/" + summary["leaderboard"]["metric"]] = summary["leaderboard"]["score"]
    artifact = wandb.Artifact("submission", type="submission")
    artifact.add_file(summary["submission"])
    run.log_artifact(artifact)


register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point ``pipeline-predict``."""
    run(cfg)


if __name__ == "__main__":
    main()
