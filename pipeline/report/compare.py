"""Rows from other predict folders scored on the same OOF rows: a distilled student, a pseudo-labelled generation.

``pipeline-report compare=[outputs/demo/student/predict]`` adds one row per folder: what that folder
submitted (its merge under its policy, cross-fitted when fitted, exactly as its own report scores it), paired
with this report's baseline on the same rows, with its inference cost per 1,000 images from its own timings.
The row is labelled by how its members were trained (``member.json`` ``recipe.teacher``): ``student
(distilled)``, ``generation 2 (pseudo-labelled)``, or ``compared run``. Compared rows are never candidates
of this report's own pick. Their OOF rows are honest only because a taught member's targets come from
teachers that never saw its validation rows (:mod:`pipeline.predict.teacher`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import Metric
from pipeline.member.manifest import read_manifest
from pipeline.report.load import PredictRun, load_predict_run
from pipeline.report.score import (
    Row,
    row_cost,
    submission_key,
    submitted_name,
    submitted_oof,
    submitted_policies,
    submitted_single,
)
from pipeline.report.text import relative_error_reduction

__all__ = ["TAUGHT", "submitted_cost", "compare_rows", "compared_summary", "compared_sentences"]

TAUGHT = {"distill": "student (distilled)", "pseudo": "generation 2 (pseudo-labelled)"}
"""Row kinds of compared runs whose members were all taught the same way (``recipe.teacher.kind``)."""


def _kind(other: PredictRun) -> str:
    """How the compared run's members were trained, read from its sweep folder (never a recorded path)."""
    kinds = set()
    for name in other.info["members"]:
        try:
            recipe = read_manifest(other.path.parent / name).recipe
        except (OSError, ValueError):  # MemberError is a ValueError
            recipe = None
        kinds.add(((recipe.teacher if recipe is not None else None) or {}).get("kind"))
    (kind,) = kinds if len(kinds) == 1 else (None,)
    return TAUGHT.get(str(kind), "compared run")


def submitted_cost(other: PredictRun) -> tuple[int, int, float]:
    """Fold members, forward passes per image and seconds per 1,000 images of what the compared run submitted."""
    key, single = submission_key(other), submitted_single(other)
    if single is not None:
        used = {single: 1.0}
    else:
        used = {m: w for m, w in other.weights(str(other.info["submission_policy"])).items() if w > 0}
    return row_cost(other, Row("compared", "", key, np.zeros(0), used or dict.fromkeys(other.models, 1.0)))


def compare_rows(pr: PredictRun, folders: Sequence[str | Path], metric: Metric) -> list[Row]:
    """One row per compared predict folder, its OOF rows put in this report's row order.

    Raises:
        ConfigError: a folder that is this one, or scored other rows, labels or classes than this report.
    """
    rows = []
    for folder in folders:
        path = Path(str(folder)).expanduser()
        if path.resolve() == pr.path.resolve():
            raise ConfigError(f"compare={folder} is the report's own predict folder; name another run's predict folder.")
        try:
            other = load_predict_run(path)
        except FileNotFoundError as err:
            raise ConfigError(f"compare={folder}: {err}") from None
        if other.classes != pr.classes:
            raise ConfigError(f"compare={folder} predicts the classes {other.classes[:6]}…, not this report's "
                              f"{pr.classes[:6]}…: compare runs of one competition.")
        position = {i: n for n, i in enumerate(other.ids)}
        missing = [i for i in pr.ids if i not in position]
        if missing or len(other.ids) != len(pr.ids):
            raise ConfigError(f"compare={folder} scored {len(other.ids)} OOF rows, this report {len(pr.ids)}, "
                              f"{len(missing)} of them missing there: train the compared run on the same split.")
        order = [position[i] for i in pr.ids]
        if not np.array_equal(np.asarray(other.labels)[order], np.asarray(pr.labels)):
            raise ConfigError(f"compare={folder}: its OOF rows carry other labels than this report's.")
        probs = submitted_oof(other, metric)
        if probs is None:
            raise ConfigError(f"compare={folder} has no OOF rows under its submission's policy (an inference-only "
                              "run); predict it in mode=full.")
        policy = ", ".join(sorted({other.policy_names[k] for k in submitted_policies(other).values()}))
        kind = _kind(other)
        what = f"{kind}: {submitted_name(other)} of {', '.join(other.models)}"
        row = Row(kind, what, "", np.asarray(probs)[order], {}, submitted_name(other))
        row.label, row.policy, row.cost = f"{what} / {policy}", policy, submitted_cost(other)
        rows.append(row)
    return rows


def compared_summary(extra: pd.DataFrame, base: pd.Series, final: dict[str, Any] | None,
                     metric: Metric) -> list[dict[str, Any]]:
    """Each compared row against the baseline, and the share of the submission's gain it keeps."""
    out = []
    for _, row in extra.iterrows():
        diff, low, high = float(row["diff_vs_best_single"]), float(row["ci_low"]), float(row["ci_high"])
        rer = relative_error_reduction(diff, low, high, float(base[metric.name]), metric.greater_is_better)
        kept = None
        if final is not None and final.get("relative_error_reduction") and rer is not None:
            gain = float(final["relative_error_reduction"]["rer"])
            kept = rer["rer"] / gain if gain > 0 else None
        out.append({"row": row["row"], "kind": row["kind"], "score": float(row[metric.name]), "diff": diff,
                    "ci_low": low, "ci_high": high, "relative_error_reduction": rer, "share_of_submission_gain": kept,
                    "sec_per_1000_images": float(row["sec_per_1000_images"]),
                    "forward_passes_per_image": int(row["forward_passes_per_image"])})
    return out


def compared_sentences(compared: list[dict[str, Any]], final: dict[str, Any] | None, metric: str) -> list[str]:
    """One sentence per compared run: its score against the best single model, its cost, the gain it keeps."""
    parts = []
    for c in compared:
        rer = c["relative_error_reduction"]
        text = (f"Compared, {c['row']}: {metric} {c['score']:.4f}, {c['diff']:+.4f} vs the best single model "
                f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" + (f", RER {100 * rer['rer']:+.1f}%" if rer else ""))
        seconds = c["sec_per_1000_images"]
        text += (f", at {seconds:.3g} s per 1,000 images" if math.isfinite(seconds)
                 else f", at {c['forward_passes_per_image']} forward pass(es) per image")
        if c["share_of_submission_gain"] is not None:
            text += f"; it keeps {100 * c['share_of_submission_gain']:.0f}% of the submission's error reduction."
        elif final is not None:
            text += "; the submission gained nothing over the best single model, so there was no gain to keep."
        else:
            text += "."
        parts.append(text)
    return parts
