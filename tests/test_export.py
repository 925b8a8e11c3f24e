"""Export: safetensors + JSON per member, loadable with timm alone, and accepted by predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

from pipeline.member.export import export_ensemble
from pipeline.member.folder import find_members
from pipeline.member.manifest import read_manifest
from pipeline.member.weights import META, WEIGHTS, load_state_dict
from tests.test_predict import run_predict, sweep  # noqa: F401  (module-scoped fixture of two real members)


def test_every_member_has_an_export_loadable_with_timm_alone(sweep: Path) -> None:  # noqa: F811
    for folder in sorted(p for p in sweep.iterdir() if (p / "member.json").is_file()):
        meta = json.loads((folder / META).read_text())
        overlay = {**meta["pretrained_cfg_overlay"], "file": str(folder / WEIGHTS)}
        model = timm.create_model(meta["model_name"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"],
                                  pretrained=True, pretrained_cfg_overlay=overlay, **meta["model_kwargs"]).eval()
        ckpt = load_state_dict(folder / "checkpoints" / "best.ckpt")
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, ckpt[key], msg=f"{folder.name}: {key}")
        assert meta["mean"] == read_manifest(folder).mean and meta["crop_size"] == 28


def test_exported_ensemble_predicts_like_the_original(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:  # noqa: F811
    orig = run_predict(sweep, demo_slice, tmp_path / "orig")
    exported = export_ensemble(str(sweep), tmp_path / "shipped")
    assert sorted(p.name for p in exported) == sorted(orig["members"])
    for folder in exported:
        assert not (folder / "checkpoints").exists() and read_manifest(folder).checkpoint == WEIGHTS
    members, _ = find_members(tmp_path / "shipped")
    assert len(members) == 2
    again = run_predict(tmp_path / "shipped", demo_slice, tmp_path / "again")
    a = (tmp_path / "orig" / "ensemble_test.csv").read_text().splitlines()
    b = (tmp_path / "again" / "ensemble_test.csv").read_text().splitlines()
    assert a == b
    assert again["leaderboard"]["score"] == pytest.approx(orig["leaderboard"]["score"])


def test_export_without_checkpoints_folder_keeps_no_pickles(sweep: Path, tmp_path: Path) -> None:  # noqa: F811
    out = export_ensemble(str(sweep), tmp_path / "e")
    files = {p.suffix for folder in out for p in folder.iterdir()}
    assert ".ckpt" not in files and ".pth" not in files
    shutil.rmtree(tmp_path / "e")
