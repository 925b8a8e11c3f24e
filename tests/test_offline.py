"""Offline use: test set under the submission policy only, inference-only mode, export, the kit, read-only inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

import pipeline
from pipeline.data.spec import DataSpec
from pipeline.member.export import ENSEMBLE, TIMM_CONFIG, export_ensemble
from pipeline.member.folder import find_members
from pipeline.member.weights import build_model
from pipeline.predict.kit import MEMBERS, WHEELS, build_kit
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.report.build import build_report
from pipeline.submission.format import SubmissionError
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import copy_members
from tests.packaging import fresh_venv, run

CARUANA = EnsembleSpec(weights="caruana", caruana_rounds=10)


def _opts(**kw: object) -> PredictOptions:
    return PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None, **kw)  # type: ignore[arg-type]


def _submit(members: Path, comp: Path, out: Path, ens: EnsembleSpec = CARUANA, **kw: object) -> dict:
    spec = DataSpec(root=str(comp), in_chans=1, solution="solution.csv" if (comp / "solution.csv").is_file() else None)
    report = [create_policy("none"), create_policy("hflip")]
    return submit(str(members), spec, report, create_policy("ten_crop"), out, _opts(**kw), ens, SubmissionOptions(),
                  "accuracy")


@pytest.fixture(scope="module")
def full_run(mixed_sweep: Path, demo_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A full predict run (Caruana weights) of copies of the two mixed-resolution members."""
    root = tmp_path_factory.mktemp("full")
    members = copy_members(mixed_sweep, root / "sw")
    out = root / "predict"
    return members, out, _submit(members, demo_slice, out)


def test_test_set_is_predicted_under_the_submission_policy_only(full_run: tuple[Path, Path, dict]) -> None:
    members, out, summary = full_run
    submit_key = summary["submission_policy"]
    assert summary["test_policies"] == [submit_key] and len(summary["policies"]) == 3
    for folder in members.glob("*-holdout"):
        cached = [p.name for p in (folder / "predictions").glob("*.csv")]
        assert len([n for n in cached if n.startswith("val-")]) == 3  # every policy on the OOF rows
        assert [n for n in cached if n.startswith("test-")] == [n for n in cached if n.startswith("test-") and "ten_crop" in n]
        assert len([n for n in cached if n.startswith("test-")]) == 1
    assert sorted(p.name for p in (out / "test").glob("*.csv")) == sorted(f"{g}__{submit_key}.csv" for g in summary["models"])
    for per_policy in summary["timings"].values():  # the report's cost column comes from OOF timings that exist
        assert all(t["measured_on"] == "oof" and t["seconds_per_1000"] > 0 for t in per_policy.values())
    df = build_report(out, n_boot=20)
    # 2 models × 3 policies, mean and Caruana under each, and 5 more merge methods under the submission's policy
    # and the baseline's
    assert np.isfinite(df["sec_per_1000_images"]).all() and len(df) == 6 + 2 * 3 + 5 * 2


def test_report_policies_on_test_are_opt_in(full_run: tuple[Path, Path, dict], demo_slice: Path, tmp_path: Path) -> None:
    members, _, summary = full_run
    val = sorted(members.glob("*/predictions/val-*.csv"))
    stamps = [p.stat().st_mtime_ns for p in val]
    again = _submit(members, demo_slice, tmp_path / "p", test_all_policies=True)
    assert sorted(again["test_policies"]) == sorted(summary["policies"])
    assert len(list((tmp_path / "p" / "test").glob("*.csv"))) == 2 * 3
    assert [p.stat().st_mtime_ns for p in val] == stamps  # OOF predictions came from the cache
    assert again["weights"] == summary["weights"]


def _test_only_copy(demo: Path, dest: Path) -> Path:
    """The competition as an offline notebook sees it: test images and the sample, no training data."""
    dest.mkdir()
    shutil.copytree(demo / "test", dest / "test")
    shutil.copy(demo / "sample_submission.csv", dest)
    return dest


def test_inference_only_mode_from_an_export_matches_the_full_run(
    full_run: tuple[Path, Path, dict], demo_slice: Path, tmp_path: Path
) -> None:
    members, out, summary = full_run
    export_ensemble(str(members), tmp_path / "export", out)
    shipped = sorted(p.name.split("-")[1].split(".")[0] for p in (tmp_path / "export").glob("*/predictions/val-*.csv"))
    assert shipped == sorted(["hflip", "none", "ten_crop"] * 2)  # the OOF predictions travel with the members
    comp = _test_only_copy(demo_slice, tmp_path / "comp")
    again = _submit(tmp_path / "export", comp, tmp_path / "p", mode="submit")
    assert again["mode"] == "submit" and again["weights"] == summary["weights"]
    assert {s for per in again["oof_source"].values() for s in per.values()} == {"cache"}
    assert (tmp_path / "p" / "submission.csv").read_bytes() == (out / "submission.csv").read_bytes()
    build_report(tmp_path / "p", n_boot=20)


def test_inference_only_mode_without_cached_oof_fits_on_val_predictions(
    mixed_sweep: Path, demo_slice: Path, tmp_path: Path
) -> None:
    members = copy_members(mixed_sweep, tmp_path / "sw")
    comp = _test_only_copy(demo_slice, tmp_path / "comp")
    summary = _submit(members, comp, tmp_path / "p", mode="submit")
    none_key = next(k for k in summary["policies"] if k.startswith("none."))
    assert list(summary["policies"]) == [none_key]  # the only OOF the members carry: val_predictions.csv
    assert set(summary["oof_source"][none_key].values()) == {"val_predictions.csv"}
    assert summary["weights_fitted_on"] == {summary["submission_policy"]: none_key}
    assert summary["weights"][summary["submission_policy"]] == summary["weights"][none_key]
    assert not list(members.glob("*/predictions/val-*"))  # no OOF computed: there are no training images
    assert summary["timings"][next(iter(summary["models"]))][summary["submission_policy"]]["measured_on"] == "test"
    df = build_report(tmp_path / "p", n_boot=20)
    assert set(df["policy"]) == {"none"}


def _absolute_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith(os.sep) else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _absolute_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _absolute_strings(v)]
    return []


def test_export_is_timm_standard_relative_and_predicts_byte_identically(
    full_run: tuple[Path, Path, dict], demo_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members, out, _ = full_run
    export_ensemble(str(members), tmp_path / "first", out)
    moved = Path(shutil.move(str(tmp_path / "first"), str(tmp_path / "elsewhere" / "export")))  # paths are relative
    found, _ = find_members(members)
    torch.manual_seed(0)
    for member in found:
        folder = moved / member.name
        for name in ("member.json", "model.json", TIMM_CONFIG):
            assert _absolute_strings(json.loads((folder / name).read_text())) == [], name
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # timm alone, no pipeline code path
        size = member.manifest.crop_size
        x = torch.randn(4, 1, size, size)
        with torch.no_grad():
            assert torch.equal(model(x), build_model(member)(x))
        assert json.loads((folder / TIMM_CONFIG).read_text())["label_names"] == member.manifest.classes
    assert _absolute_strings(json.loads((moved / ENSEMBLE).read_text())) == []
    monkeypatch.chdir(tmp_path)
    options = _opts(prediction_cache_dir=str(tmp_path / "cache"))
    a = pipeline.predict_images(members, demo_slice / "test", options=options)
    b = pipeline.predict_images(moved, demo_slice / "test", options=options)
    assert a.ids == b.ids and np.array_equal(a.probs, b.probs)


def test_submission_kinds_without_a_sample(full_run: tuple[Path, Path, dict], demo_slice: Path, tmp_path: Path) -> None:
    members, _, _ = full_run
    pred = pipeline.predict_images(members, demo_slice / "test", options=_opts())
    path = pipeline.write_submission_file(pred, tmp_path / "default.csv")
    frame = pd.read_csv(path, dtype={"id": str})
    assert list(frame.columns) == ["id", "label", *pred.classes] and frame["label"].tolist() == pred.labels()
    np.testing.assert_allclose(frame[pred.classes].to_numpy().sum(1), 1, atol=1e-5)
    with pytest.raises(SubmissionError, match=r"classes \['Ankle boot'\] contain spaces; set submission.label_as=index"):
        pipeline.write_submission_file(pred, tmp_path / "top3.csv", kind="topk", k=3)  # names would be ambiguous
    top = pd.read_csv(pipeline.write_submission_file(pred, tmp_path / "top3.csv", kind="topk", k=3, label_as="index"))
    best = [[str(i) for i in np.argsort(-p, kind="stable")[:3]] for p in pred.probs]
    assert list(top.columns) == ["id", "label"] and [s.split(" ") for s in top["label"].astype(str)] == best
    with pytest.raises(SubmissionError, match=r"submission.k=11.*between 1 and the number of classes \(10\)"):
        pipeline.write_submission_file(pred, tmp_path / "top11.csv", kind="topk", k=11)
    assert not (tmp_path / "top11.csv").exists()


READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from pipeline.data.spec import DataSpec
    from pipeline.predict.spec import EnsembleSpec, PredictOptions
    from pipeline.predict.tta import create_policy
    from pipeline.submission.spec import SubmissionOptions
    from pipeline.submission.stage import submit

    members, comp, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    try:
        (members / "probe").write_text("x")
        sys.exit("the member folders are writable: the test would prove nothing")
    except PermissionError:
        pass
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None, mode=mode)
    summary = submit(str(members), DataSpec(root=str(comp), in_chans=1), [create_policy("none")],
                     create_policy("ten_crop"), out, opts, EnsembleSpec(weights="caruana", caruana_rounds=5),
                     SubmissionOptions(), "accuracy")
    print(json.dumps(summary["prediction_cache"]))
    """
)


def _without_write_permission(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command that cannot write to read-only files: as root, without the capability that ignores modes."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: read-only folders cannot be enforced")
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("mode", ["full", "submit"])
def test_read_only_member_folders(mixed_sweep: Path, demo_slice: Path, tmp_path: Path, mode: str) -> None:
    members = copy_members(mixed_sweep, tmp_path / "sw")
    subprocess.run(["chmod", "-R", "a-w", str(members)], check=True)
    before = sorted((p, p.stat().st_mtime_ns) for p in members.rglob("*"))
    script = tmp_path / "ro.py"
    script.write_text(READ_ONLY_SCRIPT)
    try:
        proc = _without_write_permission(sys.executable, str(script), str(members), str(demo_slice),
                                         str(tmp_path / "out"), mode)
        assert proc.returncode == 0, proc.stderr[-3000:]  # (the script first checks that it cannot write there)
        caches = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, dirs in caches.items():
            assert Path(dirs[-1]) == tmp_path / "out" / "prediction_cache" / name
            assert list(Path(dirs[-1]).glob("test-*.csv"))  # the cache went to the predict folder
        assert (tmp_path / "out" / "submission.csv").is_file()
        assert sorted((p, p.stat().st_mtime_ns) for p in members.rglob("*")) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(members)], check=True)


@pytest.mark.slow
def test_offline_kit_installs_without_an_index_and_predicts_outside_the_source_tree(
    full_run: tuple[Path, Path, dict], demo_slice: Path, tmp_path: Path
) -> None:
    members, out, _ = full_run
    kit = build_kit(str(members), tmp_path / "kit", out)  # the wheel is built from the source tree
    assert (kit / "predict.py").is_file() and len(list((kit / WHEELS).glob("pipeline-*.whl"))) == 1
    assert (kit / MEMBERS / ENSEMBLE).is_file()
    venv = fresh_venv(tmp_path / "venv")
    work = tmp_path / "notebook"
    work.mkdir()
    py = str(venv / "bin" / "python")
    found = run(venv, work, py, "-c", "import importlib.util; print(importlib.util.find_spec('pipeline'))").stdout
    assert found.strip() == "None"  # not installed until the kit installs it
    proc = run(venv, work, py, str(kit / "predict.py"), "--images", str(demo_slice / "test"), "--sample",
               str(demo_slice / "sample_submission.csv"), "--out", "submission.csv", "--device", "cpu", "--num-workers", "0")
    assert "Submission written" in proc.stdout
    where = run(venv, work, py, "-c", "import pipeline; print(pipeline.__file__)").stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(Path(pipeline.__file__).parents[1])
    assert (work / "submission.csv").read_bytes() == (out / "submission.csv").read_bytes()

    shutil.rmtree(kit / WHEELS)  # a kit uploaded without its wheel
    broken = run(venv, work, py, str(kit / "predict.py"), "--images", str(demo_slice / "test"), check=False)
    assert broken.returncode != 0 and f"{kit / WHEELS} holds no pipeline wheel" in broken.stderr
