"""Every competition target end to end through the console scripts: data, train, predict, report, kit.

One test per task (multi-label, ordinal, regression, binary) on its small demo competition
(``pipeline-demo-data --task``), with the shipped experiment (``experiment=task_<kind>``), two tiny members
trained for one epoch. The kit runs from the same wheel for all four and must write the very same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.packaging import build_wheel

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FOLDERS = {"multilabel": "fashion-mosaics", "ordinal": "digit-grades", "regression": "shape-sizes",
           "binary": "fashion-footwear"}
QUICK = ["trainer.max_epochs=1", "data.batch_size=32", "logger=none", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pipeline wheel for the four kits."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _check_submission(task: str, sub: pd.DataFrame, sample: pd.DataFrame, tags: list[str]) -> None:
    assert list(sub.columns) == list(sample.columns)
    assert sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    values = sub.iloc[:, 1]
    if task == "multilabel":  # space-separated known tags (an empty cell: no tag)
        assert all(set(str(c).split()) <= set(tags) for c in values.fillna(""))
    elif task == "ordinal":
        assert values.between(0, 9).all() and (values == values.round()).all()
    elif task == "regression":
        assert values.between(4.0, 12.0).all() and values.nunique() > 1
    else:
        assert values.between(0, 1).all() and values.nunique() > 1


@pytest.mark.parametrize("task", list(FOLDERS))
def test_task_from_data_to_kit(task: str, tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "data" / FOLDERS[task]
    _run(tmp_path, str(BIN / "pipeline-demo-data"), "--task", task, "--out", str(root), "--n-train", "120",
         "--n-test", "40")
    common = [f"experiment=task_{task}", f"paths.root={tmp_path}"]
    _run(tmp_path, str(BIN / "pipeline-train"), "-m", *common, *QUICK)
    out = _run(tmp_path, str(BIN / "pipeline-predict"), *common, "logger=none").stdout
    assert "Demo leaderboard" in out
    predict = tmp_path / "outputs" / f"task_{task}" / "demo" / "predict"
    record = json.loads((predict / "predict.json").read_text())
    assert record["task"]["kind"] == task
    assert record["leaderboard"]["rows"] == 40 and np.isfinite(record["leaderboard"]["score"])
    if task in ("multilabel", "ordinal"):  # thresholds / cut points fitted on OOF rows, scored cross-fitted
        decision = record["decision"]
        assert decision["kind"] == ("thresholds" if task == "multilabel" else "cutpoints")
        assert np.isfinite(decision["oof_score_cross_fitted"])
    else:
        assert record["decision"] is None
    sub = pd.read_csv(predict / "submission.csv", dtype={0: str})
    sample = pd.read_csv(root / "sample_submission.csv", dtype={0: str})
    _check_submission(task, sub, sample, record["classes"])

    _run(tmp_path, str(BIN / "pipeline-report"), *common, "logger=none", "n_boot=50")
    report = (predict / "report.md").read_text()
    assert "ensemble-fitted" in report and "Δ vs baseline" in report
    plot = "confusion_matrix.png" if task == "binary" else f"{task}.png"
    assert (predict / plot).is_file()

    kit = tmp_path / "kit"
    _run(tmp_path, str(BIN / "pipeline-export"), str(predict.parent), "--predict-dir", str(predict), "--kit", str(kit),
         "--wheel", str(wheel))
    written = tmp_path / "kit_submission.csv"
    _run(tmp_path, sys.executable, str(kit / "predict.py"), "--images", str(root / "test"), "--sample",
         str(root / "sample_submission.csv"), "--out", str(written))
    assert written.read_bytes() == (predict / "submission.csv").read_bytes()
