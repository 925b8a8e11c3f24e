"""Reading a predict folder back: ``predict.json`` plus every model's OOF predictions, aligned on shared rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import safe_name
from pipeline.core.task import Task
from pipeline.member.predictions import read_predictions
from pipeline.predict.plan import policy_names
from pipeline.predict.record import PredictRecord

__all__ = ["AUTO", "PredictRun", "load_predict_run"]

log = logging.getLogger(__name__)




@dataclass
class PredictRun:
    """A predict folder read back: ``predict.json`` plus every model's OOF predictions.

    Attributes:
        path: The predict folder.
        info: ``predict.json`` as written by ``pipeline-predict``.
        classes: Class names, in probability-column order.
        ids: OOF row ids shared by every model and policy, in file order.
        labels: ``[N]`` integer labels of those rows (other tasks: their targets, :mod:`pipeline.core.task`).
        oof: ``(model, policy key) → [N, K]`` probabilities, rows aligned with ``ids``.
        policy_names: Readable name of each policy key (its name, plus the settings that tell apart policies
            sharing it; never the file key's hash).
    """

    path: Path
    info: dict[str, Any]
    classes: list[str]
    ids: list[str]
    labels: np.ndarray
    oof: dict[tuple[str, str], np.ndarray]
    policy_names: dict[str, str]

    @property
    def task(self) -> Task | None:
        """The members' task; None for one class per image (multiclass), whose report is as it always was."""
        task = Task.from_dict(self.info.get("task"), self.classes)
        return None if task.kind == "multiclass" else task

    @property
    def models(self) -> dict[str, list[str]]:
        """Model → its fold members."""
        return dict(self.info["models"])

    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        """Policy key → the policy's settings, ``views`` included."""
        return dict(self.info["policies"])

    @property
    def method(self) -> str:
        """The reduction ``pipeline-predict`` merged models with."""
        return str(self.info["ensemble"].get("method", "prob_mean"))

    @property
    def mixed(self) -> bool:
        """``tta=auto`` gave the models different policies: the submission's policy key is ``auto``."""
        return self.info.get("submission_policy") == AUTO and bool((self.info.get("submitted") or {}).get("models"))

    def model_key(self, model: str, key: str) -> str:
        """The policy key whose OOF rows ``model`` contributes to a row under ``key`` (``auto``: its own choice)."""
        return str(self.info["submitted"]["models"][model]) if key == AUTO and self.mixed else key

    def weights(self, key: str) -> dict[str, float]:
        """The submission's model weights under policy ``key`` (equal when predict.json has none)."""
        saved = self.info["weights"].get(key)
        if not saved:
            return dict.fromkeys(self.models, 1.0 / len(self.models))
        return {m: float(saved.get(m, 0.0)) for m in self.models}


AUTO = "auto"
"""The policy key of a submission whose models were each predicted under their own ``tta=auto`` choice."""




_Oof = tuple[list[str], np.ndarray, np.ndarray]


def _read_oof(path: Path, info: dict[str, Any]) -> dict[tuple[str, str], _Oof]:
    out = {}
    for model in info["models"]:
        for key in info["policies"]:
            file = path / "oof" / f"{safe_name(model)}__{key}.csv"
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing: re-run pipeline-predict for this folder.")
            ids, probs, labels = read_predictions(file, info["classes"])
            if labels is None:
                raise ValueError(f"{file} has no 'label' column; OOF predictions need labels.")
            out[(model, key)] = (ids, probs, labels)
    return out


def load_predict_run(predict_dir: str | Path) -> PredictRun:
    """Read ``predict.json`` and the OOF files, aligned on the rows every model predicted.

    Models trained on different folds may not share every OOF row; the report then keeps the common
    rows (with a warning) so that every comparison is paired.

    Raises:
        FileNotFoundError: No ``predict.json`` or a missing OOF file.
        ValueError: A malformed ``predict.json`` or labels that disagree between files.
    """
    path = Path(predict_dir)
    info = PredictRecord.read(path).as_dict()  # the record predict wrote, checked for the keys it must have
    raw = _read_oof(path, info)
    first_ids = next(iter(raw.values()))[0]
    common = set(first_ids).intersection(*(set(ids) for ids, _, _ in raw.values()))
    ids = [i for i in first_ids if i in common]
    if any(len(v[0]) != len(ids) for v in raw.values()):
        log.warning("Models predicted different OOF rows; the report scores the %d shared rows.", len(ids))
    if not ids:
        raise ValueError(f"The OOF files in {path / 'oof'} share no rows; nothing to compare.")
    oof, labels = {}, None
    for (model, key), (file_ids, probs, file_labels) in raw.items():
        pos = {i: r for r, i in enumerate(file_ids)}
        rows = np.array([pos[i] for i in ids])
        if labels is not None and not np.array_equal(labels, file_labels[rows]):
            raise ValueError(f"oof/{safe_name(model)}__{key}.csv has other labels than the other OOF files.")
        labels = file_labels[rows]
        oof[(model, key)] = probs[rows]
    assert labels is not None
    names = {**policy_names(info["policies"]), **(info.get("policy_names") or {})}
    if info.get("submission_policy") == AUTO:
        names[AUTO] = "tta=auto (each model its own policy)"
    return PredictRun(path, info, list(info["classes"]), ids, labels, oof, names)
