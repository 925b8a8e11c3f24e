"""The teacher record, shared by training and inference: settings, request, targets, and the member's files.

A pseudo-labelled or distilled member (``teacher=pseudo|distill``, :mod:`pipeline.train.teacher`) trains on
targets its teacher, a finished predict folder, made (:mod:`pipeline.predict.teacher` builds them). What it
trained on is recorded in its member folder: ``teacher.json`` (source, digest, settings, the teacher's
members, row counts) and ``teacher_targets.csv`` (every training row and test image with its targets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_path, write_json
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable

__all__ = ["TEACHER_KINDS", "TeacherSpec", "TeacherRequest", "TeacherTargets", "TeacherBuilder", "select_test_rows",
           "write_teacher_record"]

TEACHER_KINDS = ("pseudo", "distill")


@dataclass
class TeacherSpec:
    """The ``teacher`` config: which finished ensemble teaches, and how.

    Attributes:
        kind: ``pseudo`` or ``distill``.
        source: The teacher's predict folder (``predict.json``, ``ensemble_test.csv``, its members).
        temperature: T of the soft targets (distill; pseudo uses 1): softmax(log p / T), loss scaled by T².
        alpha: Distill: the weight of the soft term on training rows; 1 − alpha goes to the hard label.
        threshold: The least top probability a test image needs to join training (0: every test image).
        targets: Pseudo: ``soft`` (the probabilities) or ``hard`` (the top class, one-hot).
        test_rows: Distill: also train on the test images' soft targets.
        digest: Content hash of the source's ``predict.json`` and ``ensemble_test.csv`` (set by the builder's
            caller; part of the member's hash, so a re-predicted source retrains the member).
    """

    kind: str
    source: str
    temperature: float = 1.0
    alpha: float = 0.5
    threshold: float = 0.0
    targets: str = "soft"
    test_rows: bool = True
    digest: str = ""

    @property
    def tau(self) -> float:
        """The temperature in use (pseudo-labels are the ensemble's probabilities as they are)."""
        return float(self.temperature) if self.kind == "distill" else 1.0


@dataclass
class TeacherRequest:
    """What the builder needs to know of the new member: its data, table, classes and split."""

    data: DataSpec
    table: ImageTable
    train_idx: np.ndarray
    val_idx: np.ndarray


@dataclass
class TeacherTargets:
    """The teacher's targets for one member.

    Attributes:
        train_probs: ``[n_train, K]`` the ensemble's probabilities for the member's training rows (table order
            of ``train_idx``); None for pseudo (training rows keep their hard labels).
        test_table: The test images that join training (labels None).
        test_probs: ``[n_test, K]`` the ensemble's probabilities for them.
        record: What ``teacher.json`` records (source, members, counts...).
    """

    train_probs: np.ndarray | None
    test_table: ImageTable
    test_probs: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


TeacherBuilder = Callable[[TeacherSpec, TeacherRequest], TeacherTargets]


def select_test_rows(probs: np.ndarray, threshold: float, where: str) -> np.ndarray:
    """Indices of the test rows whose top probability reaches ``threshold``.

    Raises:
        ConfigError: none does (naming the threshold, the largest top probability and ``where``).
    """
    top = probs.max(axis=1) if len(probs) else np.zeros(0)
    keep = np.flatnonzero(top >= threshold)
    if len(keep) == 0:
        best = f"{top.max():.4f}" if len(top) else "none (no test rows)"
        raise ConfigError(f"teacher.threshold={threshold} selects no test image of {where}: the largest top "
                          f"probability is {best}. Lower teacher.threshold.")
    return keep


def write_teacher_record(member_dir: Path, spec: TeacherSpec, targets: TeacherTargets, train_ids: list[str],
                         classes: list[str]) -> None:
    """``teacher.json`` and ``teacher_targets.csv``: the rows the member trained on with the teacher's probabilities.

    ``teacher_targets.csv`` has ``id``, ``source`` (``train`` or ``test``) and ``p:<class>`` columns: the
    ensemble's probabilities as the teacher gave them (before the temperature; ``targets=hard`` trains on their
    top class; a pseudo-labelled member's training rows keep their labels, so theirs are empty).
    """
    n_train = len(train_ids)
    probs = targets.train_probs if targets.train_probs is not None else np.full((n_train, len(classes)), np.nan)
    frame = pd.DataFrame(np.concatenate([probs, targets.test_probs]), columns=[f"p:{c}" for c in classes])
    frame.insert(0, "source", ["train"] * n_train + ["test"] * len(targets.test_probs))
    frame.insert(0, "id", [*train_ids, *targets.test_table.ids])
    with atomic_path(member_dir / "teacher_targets.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_json(member_dir / "teacher.json", {**dataclasses.asdict(spec), **targets.record,
                                             "rows": {"train": n_train, "test": len(targets.test_probs)}})
