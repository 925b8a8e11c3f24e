"""The inference stage end to end on two tiny real members, plus its error cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.errors import ConfigError, DataError, MemberError
from pipeline.core.reduce import merge_members
from pipeline.data.spec import DataSpec
from pipeline.member.folder import find_members
from pipeline.member.manifest import read_manifest, write_manifest
from pipeline.member.predictions import read_predictions
from pipeline.member.weights import load_state_dict
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit as predict
from tests.helpers import train


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Path:
    """Two real 1-epoch members (different models) in one holdout sweep folder."""
    from omegaconf import open_dict

    from tests.conftest import compose_train

    root = tmp_path_factory.mktemp("sweep")
    for model in ["resnet10t", "lenet5"]:
        cfg = compose_train([
            "trainer=cpu", "logger=none", f"model={model}", f"data.root={demo_slice}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "data.num_workers=0", "data.batch_size=32", f"paths.root={root}",
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / "sw" / cfg.member_name)
        train(cfg)
    return root / "sw"


def run_predict(sweep: Path, demo: Path, out: Path, **kw: object) -> dict:
    spec = DataSpec(root=str(demo), image_size=32, crop_size=28, in_chans=1, solution="solution.csv")
    opts = PredictOptions(device="cpu", batch_size=16, num_workers=0, chunk_size=kw.pop("chunk_size", None))  # type: ignore[arg-type]
    ens = kw.pop("ens", EnsembleSpec())
    policies = [create_policy("none", 28), create_policy("hflip", 28)]
    return predict(str(kw.pop("members", sweep)), kw.pop("spec", spec), policies, create_policy("ten_crop", 28), out, opts,  # type: ignore[arg-type]
                   ens, SubmissionOptions(), "accuracy")


@pytest.fixture(scope="module")
def predicted(sweep: Path, demo_slice: Path) -> tuple[dict, Path]:
    out = sweep / "predict"
    return run_predict(sweep, demo_slice, out), out


def test_submission_is_valid_and_in_sample_order(predicted: tuple[dict, Path], demo_slice: Path) -> None:
    summary, out = predicted
    sub = pd.read_csv(out / "submission.csv", dtype=str)
    sample = pd.read_csv(demo_slice / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns)
    assert sub["id"].tolist() == sample["id"].tolist()
    classes = summary["classes"]
    assert set(sub["label"]) <= set(classes)
    lb = summary["leaderboard"]
    solution = pd.read_csv(demo_slice / "solution.csv", dtype=str)
    assert lb["score"] == pytest.approx((sub["label"] == solution["label"]).mean())
    assert "not validation" in lb["note"]


def test_ensemble_equals_mean_of_members_saved_predictions(predicted: tuple[dict, Path]) -> None:
    summary, out = predicted
    key = summary["submission_policy"]
    classes = summary["classes"]
    member_probs = []
    for folder in summary["members"].values():
        (path,) = Path(folder, "predictions").glob(f"test-*-{key}-*.csv")
        ids, probs, _ = read_predictions(path, classes)
        member_probs.append(probs)
    ens_ids, ens, _ = read_predictions(out / "ensemble_test.csv", classes)
    assert ens_ids == ids
    np.testing.assert_allclose(ens, np.mean(member_probs, axis=0), atol=1e-6)
    np.testing.assert_allclose(ens, merge_members(member_probs).numpy(), atol=1e-6)


def test_ten_crop_member_prediction_matches_manual_torchvision(predicted: tuple[dict, Path], demo_slice: Path) -> None:
    """A member's cached ten-crop test prediction equals 10 torchvision crops through the model, averaged."""
    import torchvision.transforms.functional as TF

    from pipeline.core.io import read_json
    from pipeline.data.augment import normalize_batch, transform_from_dict
    from pipeline.data.dataset import ImageDataset
    from pipeline.data.tables import read_test_table
    from pipeline.models.factory import create_model

    summary, _ = predicted
    folder = Path(summary["members"]["resnet10t-s0-holdout"])
    m = read_manifest(folder)
    model = create_model(m.model_name, m.num_classes, m.in_chans)
    model.load_state_dict(load_state_dict(folder / m.checkpoint))
    model.eval()
    table = read_test_table(DataSpec(root=str(demo_slice)))
    ds = ImageDataset(table, transform_from_dict(read_json(folder / "eval_transform.json")), m.in_chans)
    (path,) = (folder / "predictions").glob(f"test-*-{summary['submission_policy']}-*.csv")
    ids, cached, _ = read_predictions(path, m.classes)
    pos = {i: r for r, i in enumerate(ids)}
    for row in [0, 7]:
        x = normalize_batch(ds[row]["image"][None], m.mean, m.std)[0]
        crops = torch.stack(TF.ten_crop(x, [28, 28]))
        with torch.no_grad():
            expect = model(crops).softmax(-1).mean(0).numpy()
        np.testing.assert_allclose(cached[pos[table.ids[row]]], expect, atol=1e-5)


def test_rerun_uses_cache_and_gives_identical_submission(
    predicted: tuple[dict, Path], sweep: Path, demo_slice: Path, tmp_path: Path
) -> None:
    summary, out = predicted
    caches = sorted(Path(summary["members"]["lenet5-s0-holdout"], "predictions").glob("*.csv"))
    stamps = [p.stat().st_mtime_ns for p in caches]
    again = run_predict(sweep, demo_slice, tmp_path / "p2")
    assert [p.stat().st_mtime_ns for p in caches] == stamps
    assert (tmp_path / "p2" / "submission.csv").read_bytes() == (out / "submission.csv").read_bytes()
    assert again["weights"] == summary["weights"]


def test_oof_files_and_timings(predicted: tuple[dict, Path]) -> None:
    summary, out = predicted
    assert set(summary["models"]) == {"resnet10t-s0", "lenet5-s0"}
    for model, per_policy in summary["timings"].items():
        for key, t in per_policy.items():
            assert t["forward_passes_per_image"] == summary["policies"][key]["views"]
            assert t["seconds_per_1000"] > 0
            ids, probs, labels = read_predictions(out / "oof" / f"{model}__{key}.csv", summary["classes"])
            assert len(ids) == 120 and labels is not None
            np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


def test_caruana_weights_fitted_on_oof(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    summary = run_predict(sweep, demo_slice, tmp_path / "p", ens=EnsembleSpec(weights="caruana", caruana_rounds=10))
    w = summary["weights"][summary["submission_policy"]]
    assert sum(w.values()) == pytest.approx(1.0) and set(w) == {"resnet10t-s0", "lenet5-s0"}


def test_chunked_forward_gives_same_predictions(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    cp = tmp_path / "sw"
    shutil.copytree(sweep, cp, ignore=shutil.ignore_patterns("predictions", "predict"))
    run_predict(cp, demo_slice, tmp_path / "a")
    shutil.rmtree(cp / "lenet5-s0-holdout" / "predictions")
    shutil.rmtree(cp / "resnet10t-s0-holdout" / "predictions")
    run_predict(cp, demo_slice, tmp_path / "b", chunk_size=7)
    a = read_predictions(tmp_path / "a" / "ensemble_test.csv")[1]
    b = read_predictions(tmp_path / "b" / "ensemble_test.csv")[1]
    np.testing.assert_allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_no_members_found_says_where_it_looked(tmp_path: Path, demo_slice: Path) -> None:
    with pytest.raises(MemberError, match=f"No completed members found. Looked in: {tmp_path}/nothing"):
        run_predict(tmp_path, demo_slice, tmp_path / "o", members=tmp_path / "nothing")


def test_incomplete_members_are_skipped_and_reported(sweep: Path, tmp_path: Path) -> None:
    cp = tmp_path / "sw"
    shutil.copytree(sweep, cp, ignore=shutil.ignore_patterns("predictions", "predict"))
    m = read_manifest(cp / "lenet5-s0-holdout")
    m.status = "failed"
    write_manifest(cp / "lenet5-s0-holdout", m)
    members, skipped = find_members(str(cp / "*"))
    assert [x.name for x in members] == ["resnet10t-s0-holdout"]
    assert skipped == {str(cp / "lenet5-s0-holdout"): "status failed"}


def test_member_without_checkpoint(sweep: Path, tmp_path: Path) -> None:
    cp = tmp_path / "sw"
    shutil.copytree(sweep / "lenet5-s0-holdout", cp / "lenet5-s0-holdout")
    (cp / "lenet5-s0-holdout" / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(MemberError, match=r"has no checkpoint: expected .*best.ckpt"):
        find_members(cp)


def test_members_with_different_classes_are_refused(sweep: Path, tmp_path: Path) -> None:
    cp = tmp_path / "sw"
    shutil.copytree(sweep, cp, ignore=shutil.ignore_patterns("predictions", "predict"))
    m = read_manifest(cp / "lenet5-s0-holdout")
    m.classes = list(reversed(m.classes))
    write_manifest(cp / "lenet5-s0-holdout", m)
    with pytest.raises(MemberError, match=r"different class lists") as err:
        find_members(cp)
    assert "lenet5-s0-holdout" in str(err.value) and "resnet10t-s0-holdout" in str(err.value)


def test_pickled_object_checkpoint_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(MemberError, match=r"Refusing to load .*evil.ckpt.*arbitrary code"):
        load_state_dict(path)


def _comp_copy(demo: Path, tmp: Path) -> Path:
    dst = tmp / "comp"
    shutil.copytree(demo, dst)
    return dst


def test_empty_test_folder(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    comp = _comp_copy(demo_slice, tmp_path)
    shutil.rmtree(comp / "test")
    (comp / "test").mkdir()
    spec = DataSpec(root=str(comp), in_chans=1)
    with pytest.raises(DataError, match="contains no images"):
        run_predict(sweep, comp, tmp_path / "o", spec=spec)
    assert not (tmp_path / "o" / "submission.csv").exists()


def test_unreadable_test_image_is_named(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    comp = _comp_copy(demo_slice, tmp_path)
    (comp / "test" / "te00004.png").write_bytes(b"not a png")
    cp = tmp_path / "sw"
    shutil.copytree(sweep, cp, ignore=shutil.ignore_patterns("predictions", "predict"))
    with pytest.raises(DataError, match=r"te00004.png"):
        run_predict(cp, comp, tmp_path / "o")
    assert not (tmp_path / "o" / "submission.csv").exists()
    assert not list(cp.glob("*/predictions/test-*.csv"))  # no half-written prediction file either


def test_crop_larger_than_image(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    """An explicit crop is an override: refused for a member trained at another crop, unless allowed, and never
    larger than the member's image."""
    spec = DataSpec(root=str(demo_slice), in_chans=1)
    for allowed, match in (([], r"tta.crop_size=40 .*contradicts member .*recorded crop size 28"),
                           (["*"], r"tta.crop_size=40 is larger than member .*image size 32")):
        opts = PredictOptions(device="cpu", num_workers=0, allow_crop_override=allowed)
        with pytest.raises(ConfigError, match=match):
            predict(str(sweep), spec, [], create_policy("ten_crop", 40), tmp_path / "o", opts, EnsembleSpec(),
                    SubmissionOptions())
    assert not (tmp_path / "o").exists()


def test_sample_submission_ids_must_match_test_images(sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    comp = _comp_copy(demo_slice, tmp_path)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    sample.loc[0, "id"] = "ghost"
    sample.to_csv(comp / "sample_submission.csv", index=False)
    with pytest.raises(DataError, match="ghost"):
        run_predict(sweep, comp, tmp_path / "o")
    assert not (tmp_path / "o" / "submission.csv").exists()


def test_a_model_the_weights_give_zero_is_never_predicted_on_the_test_set(
    mixed_sweep: Path, demo_slice: Path, tmp_path: Path
) -> None:
    from tests.conftest import copy_members

    members = copy_members(mixed_sweep, tmp_path / "sw")
    spec = DataSpec(root=str(demo_slice), in_chans=1, solution=None)
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None)
    summary = predict(str(members), spec, [create_policy("none")], create_policy("hflip"), tmp_path / "p", opts,
                      EnsembleSpec(weights="given", given_weights=[1.0, 0.0]), SubmissionOptions(), "accuracy")
    kept, dropped = summary["models"]  # models in member order: the second one has weight 0
    assert summary["weights"][summary["submission_policy"]] == {kept: 1.0, dropped: 0.0}
    assert [p.name.split("__")[0] for p in (tmp_path / "p" / "test").glob("*.csv")] == [kept]
    folder = {m: members / summary["models"][m][0] for m in (kept, dropped)}
    assert not list((folder[dropped] / "predictions").glob("test-*.csv"))  # never predicted, not even cached
    assert list((folder[kept] / "predictions").glob("test-*.csv"))
    _, alone, _ = read_predictions(tmp_path / "p" / "test" / f"{kept}__{summary['submission_policy']}.csv",
                                   summary["classes"])
    _, merged, _ = read_predictions(tmp_path / "p" / "ensemble_test.csv", summary["classes"])
    np.testing.assert_allclose(merged, alone, atol=1e-6)  # the ensemble is the one model that counts


def test_predict_images_leaves_out_a_model_of_weight_zero(mixed_sweep: Path, demo_slice: Path, tmp_path: Path) -> None:
    """The kit's path (``pipeline.predict_images`` with ``ensemble.json``'s weights) skips weight-0 models too."""
    import pipeline
    from tests.conftest import copy_members

    members = copy_members(mixed_sweep, tmp_path / "sw")
    models = sorted(p.name.rsplit("-", 1)[0] for p in members.iterdir() if (p / "member.json").is_file())
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None)
    pred = pipeline.predict_images(members, demo_slice / "test", policy="none", options=opts,
                                   weights={models[0]: 1.0, models[1]: 0.0})
    alone = pipeline.predict_images(members / f"{models[0]}-holdout", demo_slice / "test", policy="none", options=opts)
    np.testing.assert_array_equal(pred.probs, alone.probs)
    assert not list((members / f"{models[1]}-holdout" / "predictions").glob("test-*.csv"))
