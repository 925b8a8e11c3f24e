"""Benchmark 3: one training epoch — our Lightning training vs a plain PyTorch loop.

Both contenders get the same model (a copy of one initialised ``ClassifierModule``), the same
DataLoaders (built by ``pipeline.train.datamodule.MemberDataModule``: same data, augmentation, batch size and workers),
the same optimizer and scheduler (``ClassifierModule.configure_optimizers``), and both run one
training epoch, one validation pass and save ``best`` and ``last`` checkpoints:

* **lightning, progress bar**: the real ``ClassifierModule`` under a ``Trainer`` instantiated from
  ``conf/trainer`` with ``pipeline.train.callbacks.member_callbacks`` (checkpointing, ``RichProgressBar``) and the CSV
  logger, as ``train.py`` does. Rich is told it writes to an interactive terminal (output sent to
  ``/dev/null``), so the bar renders as it would for a user.
* **lightning, no bar**: the same with ``trainer.enable_progress_bar=false``.
* **plain loop**: ``for batch in loader: forward, cross-entropy, backward, step``; then the
  validation loop (``eval_logits``, loss, accuracy) and ``torch.save`` of the two checkpoints.

Each run starts its loader workers afresh (Lightning shuts persistent workers down after ``fit``; the
plain loop's are shut down too), and the timer covers building the Trainer as well as ``fit``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks.common import (
    cli,
    compose_train,
    interleaved,
    log_progress,
    make_competition,
    member_loaders,
    paired_ratio,
    profile_top,
    target,
    timing_table,
)
from pipeline.cli.train import train_spec
from pipeline.core.tracking import LoggerSpec
from pipeline.data.folds import load_or_create_folds
from pipeline.data.tables import read_train_table
from pipeline.train.callbacks import member_callbacks
from pipeline.train.fit import _build_module
from pipeline.train.loggers import create_lightning_logger
from pipeline.train.module import ClassifierModule
from pipeline.train.spec import TrainSpec

__all__ = ["run", "main"]

NAME = "train"


def _reset_workers(*loaders: DataLoader) -> None:
    """Shut persistent workers down, as Lightning does after ``fit``, so every run starts them afresh."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None  # type: ignore[attr-defined]


def lightning_epoch(spec: TrainSpec, template: ClassifierModule, loaders: tuple[DataLoader, DataLoader], out: Path,
                    progress_bar: bool) -> Callable[[], None]:
    """One ``fit`` epoch as ``pipeline.train.fit.train_member`` runs it."""
    assert spec.trainer is not None
    spec = replace(spec, member_dir=out, callbacks=None,  # the built-in defaults: checkpoints into `out`, the bar
                   trainer=functools.partial(spec.trainer, enable_progress_bar=progress_bar))

    def go() -> None:
        module = copy.deepcopy(template)
        assert spec.trainer is not None
        trainer = spec.trainer(callbacks=member_callbacks(spec, has_logger=True), default_root_dir=str(out),
                               logger=create_lightning_logger(LoggerSpec(kind="csv"), out, None))
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            trainer.fit(module, *loaders, weights_only=True)

    return go


def plain_epoch(template: ClassifierModule, loaders: tuple[DataLoader, DataLoader], out: Path) -> Callable[[], None]:
    """The loop a user writes without Lightning: same model, optimizer, scheduler, data, checkpoints."""

    def go() -> None:
        module = copy.deepcopy(template)
        configured = module.configure_optimizers()
        optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        smoothing = module.hparams["label_smoothing"]
        module.train()
        seen, loss_sum = 0, torch.zeros(())
        for batch in loaders[0]:
            logits = module.model(batch["image"])
            loss = F.cross_entropy(logits, batch["target"], label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(logits)
            seen += len(logits)
        scheduler.step()
        module.eval()
        correct, val_loss = 0, 0.0
        with torch.no_grad():
            for batch in loaders[1]:
                logits = module.eval_logits(batch["image"])
                val_loss += float(F.cross_entropy(logits, batch["target"], reduction="sum"))
                correct += int((logits.argmax(1) == batch["target"]).sum())
        state = {"state_dict": module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, out / "best.ckpt")
        torch.save(state, out / "last.ckpt")
        _reset_workers(*loaders)

    return go


def params(large: bool) -> dict[str, Any]:
    """ResNet-10-T (the demo's model) on 5,000 images (4,000 train / 1,000 validation); ``--large``: 10,000."""
    return {"n_train": 10_000 if large else 5_000, "model": "resnet10t", "aug": "light",
            "batch_size": 128, "workers": 2, "image_size": 32, "crop_size": 28, "in_chans": 1}


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time the contenders and build the result."""
    p = params(large)
    comp = make_competition(workdir / f"fmnist-train{p['n_train']}", n_train=p["n_train"], n_test=0)
    out = workdir / "train-bench"
    cfg = compose_train([f"model={p['model']}", f"aug={p['aug']}", f"data.root={comp}", "logger=csv",
                         "trainer.max_epochs=1", f"data.batch_size={p['batch_size']}", f"data.num_workers={p['workers']}",
                         f"paths.root={out}"], output_dir=out / "member")
    spec = train_spec(cfg)
    table = read_train_table(spec.data)
    folds = load_or_create_folds(out / "folds.csv", table, spec.data)
    torch.manual_seed(0)
    template = _build_module(spec, len(table.classes))
    train_dl, val_dl, _ = member_loaders(spec, table, folds, template.mean, template.std)
    loaders = (train_dl, val_dl)
    n_train, n_val = len(train_dl) * p["batch_size"], len(val_dl.dataset)  # type: ignore[arg-type]
    os.environ.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")  # rich renders its live bar, as in a terminal
    runs = {
        "lightning_bar": lightning_epoch(spec, template, loaders, out / "pl-bar", True),
        "lightning_no_bar": lightning_epoch(spec, template, loaders, out / "pl", False),
        "plain_loop": plain_epoch(template, loaders, out / "plain"),
    }
    log_progress(NAME, f"3 contenders × {repeats} repeats, one epoch of {n_train:,} images")

    def clean() -> None:
        for name in ("pl-bar", "pl", "plain"):
            shutil.rmtree(out / name, ignore_errors=True)

    times, _ = interleaved(runs, repeats, between=clean)
    r_bar, r_plain = paired_ratio(times, "lightning_bar", "plain_loop"), paired_ratio(times, "lightning_no_bar", "plain_loop")
    targets = [target("lightning (progress bar, as configured) ÷ plain loop", "≤ 1.15×", r_bar, r_bar <= 1.15),
               target("lightning (no progress bar) ÷ plain loop", "≤ 1.15×", r_plain, r_plain <= 1.15)]
    result: dict[str, Any] = {
        "title": "Training: one epoch, our Lightning module + Trainer vs a plain PyTorch loop",
        "what": __doc__, "params": p,
        "tables": [timing_table(
            f"{p['model']}, {n_train:,} training + {n_val:,} validation images, "
            f"aug={p['aug']}, batch {p['batch_size']}, {p['workers']} loader workers", times, "plain_loop",
            items=n_train)],
        "targets": targets,
        "notes": ["Lightning also computes and logs loss and accuracy every step (torchmetrics) and writes a CSV log; "
                  "the plain loop keeps a running loss only."],
    }
    if not all(t["met"] for t in targets):
        result["profile"] = profile_top(runs["lightning_bar"])
        result["profile_of"] = "lightning_bar"
        clean()
    return result


def main() -> None:
    """CLI: ``python -m benchmarks.bench_train [--large]``."""
    cli(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
