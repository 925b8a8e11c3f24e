"""The Python API works without Hydra: train a member from a spec, predict a folder, submit, fit weights, report."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import functools, json, sys
    from pathlib import Path

    import albumentations as A
    import numpy as np
    import pandas as pd
    import pytorch_lightning as pl
    import torch
    from albumentations.pytorch import ToTensorV2

    import pipeline
    from pipeline import DataSpec, ModelSpec, TrainSpec
    from pipeline.data.demo import prepare_demo
    from pipeline.member.predictions import read_predictions
    from pipeline.predict import EnsembleSpec, PredictOptions, create_policy
    from pipeline.submission import SubmissionOptions, submit

    tmp = Path(sys.argv[1])
    comp = prepare_demo(tmp / "comp", n_train=300, n_test=40)
    data = DataSpec(root=str(comp), in_chans=1, image_size=32, crop_size=28, batch_size=32, num_workers=0,
                    solution="solution.csv")

    def transforms(mean, std):
        train = A.Compose([A.Resize(32, 32), A.RandomCrop(28, 28), A.HorizontalFlip(),
                           A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])
        return train, A.Compose([A.Resize(32, 32), ToTensorV2()])

    trainer = functools.partial(pl.Trainer, max_epochs=1, accelerator="cpu", enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0)
    metrics = []
    for seed in (0, 1):
        spec = TrainSpec(member_dir=tmp / "sweep" / f"lenet5-s{seed}-holdout", data=data, model=ModelSpec(name="lenet5"),
                         transforms=transforms, optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
                         trainer=trainer, seed=seed)
        metrics.append(pipeline.train_member(spec))

    options = PredictOptions(device="cpu", num_workers=0, batch_size=16)
    pred = pipeline.predict_images(tmp / "sweep", comp / "test", policy="ten_crop", options=options)
    sub = pipeline.write_submission_file(pred, tmp / "submission.csv", sample=comp / "sample_submission.csv")

    oof = [read_predictions(tmp / "sweep" / f"lenet5-s{s}-holdout" / "val_predictions.csv", pred.classes) for s in (0, 1)]
    assert oof[0][0] == oof[1][0]  # the same holdout rows
    weights = pipeline.fit_ensemble_weights([o[1] for o in oof], oof[0][2], metric="log_loss", rounds=10)

    out = tmp / "sweep" / "predict"
    summary = submit(str(tmp / "sweep"), data, [create_policy("none", 28)], create_policy("ten_crop", 28), out, options,
                     EnsembleSpec(weights="caruana", caruana_rounds=10), SubmissionOptions())
    report = pipeline.build_report(out, n_boot=50)
    print(json.dumps({
        "metrics": metrics, "shape": list(pred.probs.shape), "row_sums": pred.probs.sum(1).round(6).tolist()[:3],
        "classes": pred.classes, "submission": pd.read_csv(sub).columns.tolist(), "sub_rows": len(pd.read_csv(sub)),
        "weights": weights.tolist(), "report_rows": len(report), "report_md": (out / "report.md").is_file(),
        "summary_submission": summary["submission"],
        "hydra_imported": any(m == "hydra" or m.startswith("hydra.") for m in sys.modules),
    }))
    """
)


@pytest.mark.slow
def test_python_api_without_hydra(tmp_path: Path) -> None:
    script = tmp_path / "api.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={"WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # No Hydra anywhere (OmegaConf may appear: Lightning's checkpoint code imports it when it is installed).
    assert out["hydra_imported"] is False
    assert [m["n_val"] for m in out["metrics"]] == [60, 60]
    assert out["shape"] == [40, 10] and out["row_sums"] == [1.0, 1.0, 1.0]
    assert out["submission"] == ["id", "label"] and out["sub_rows"] == 40
    assert len(out["weights"]) == 2 and abs(sum(out["weights"]) - 1) < 1e-9
    assert out["report_rows"] >= 4 and out["report_md"]
    assert Path(out["summary_submission"]).is_file()
    member = json.loads((tmp_path / "sweep" / "lenet5-s0-holdout" / "member.json").read_text())
    assert member["status"] == "completed" and member["data"]["root"] == str((tmp_path / "comp").resolve())
