"""``checkpoint: best | last``: every member predicted (OOF rows and test) with the checkpoint file chosen."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from omegaconf import open_dict

from pipeline.core.errors import ConfigError, MemberError
from pipeline.core.io import safe_name
from pipeline.data.augment import normalize_batch, transform_from_dict
from pipeline.data.dataset import ImageDataset
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_test_table, read_train_table
from pipeline.member.export import export_ensemble
from pipeline.member.folder import at_checkpoint, find_members
from pipeline.member.manifest import read_manifest
from pipeline.member.predictions import read_predictions
from pipeline.models.factory import create_model
from pipeline.predict.plan import policy_key
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import compose_train, copy_members
from tests.helpers import train

NONE = create_policy("none")


@pytest.fixture(scope="module")
def two_members(demo_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two LeNet-5 members trained for 2 epochs (3 batches each), whose ``last.ckpt`` differs from ``best.ckpt``.

    With Lightning 2.6 the member's checkpoint callback writes ``last.ckpt`` only when it writes ``best.ckpt``
    (both hold the best epoch), so each member's ``last.ckpt`` is rewritten here with other weights: the
    trained ones plus fixed noise, saved as Lightning saves them (``state_dict`` with the ``model.`` prefix).
    """
    root = tmp_path_factory.mktemp("ckpt")
    for seed in (0, 1):
        cfg = compose_train([
            "trainer=cpu", "logger=none", "model=lenet5", f"data.root={demo_slice}", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "trainer.limit_train_batches=3", "data.num_workers=0",
            "data.batch_size=32", f"paths.root={root}", f"seed={seed}",
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / "sw" / cfg.member_name)
        train(cfg)
        last = root / "sw" / cfg.member_name / "checkpoints" / "last.ckpt"
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        gen = torch.Generator().manual_seed(seed)
        ckpt["state_dict"] = {k: v + 0.2 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                              for k, v in ckpt["state_dict"].items()}
        torch.save(ckpt, last)
    return root / "sw"


def _opts(cache: Path | None = None, **kw: object) -> PredictOptions:
    return PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None,  # type: ignore[arg-type]
                          prediction_cache_dir=None if cache is None else str(cache), **kw)


def _submit(members: Path, comp: Path, out: Path, **kw: object) -> dict:
    return submit(str(members), DataSpec(root=str(comp), in_chans=1), [NONE], NONE, out, _opts(**kw), EnsembleSpec(),
                  SubmissionOptions(), "accuracy")


def _expected(folder: Path, ckpt: Path, table: ImageTable) -> dict[str, np.ndarray]:
    """The member's softmax outputs with ``ckpt``, computed without the runner: timm network, torch.load, a
    centre crop of its eval transform's image, by hand."""
    m = read_manifest(folder)
    model = create_model(m.model_name, num_classes=m.num_classes, in_chans=m.in_chans, **m.model_kwargs)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    missing, _ = model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=False)
    assert not missing
    ds = ImageDataset(table, transform_from_dict(json.loads((folder / "eval_transform.json").read_text())), m.in_chans)
    out = {}
    with torch.no_grad():
        for i, row in enumerate(table.ids):
            x = TF.center_crop(normalize_batch(ds[i]["image"][None], m.mean, m.std), [m.crop_size, m.crop_size])
            out[row] = model.eval()(x).softmax(-1)[0].numpy()
    return out


def _oof_of(out: Path, model: str) -> tuple[list[str], np.ndarray]:
    ids, probs, _ = read_predictions(out / "oof" / f"{safe_name(model)}__{policy_key(NONE)}.csv")
    return ids, probs


def _val_table(comp: Path, member: Path) -> ImageTable:
    train_table = read_train_table(DataSpec(root=str(comp), in_chans=1))
    ids = set(read_predictions(member / "val_predictions.csv")[0])
    return train_table.subset(np.array([i for i, r in enumerate(train_table.ids) if r in ids]))


def test_last_predicts_oof_rows_and_test_with_last_ckpt(two_members: Path, demo_slice: Path, tmp_path: Path) -> None:
    sw = copy_members(two_members, tmp_path / "sw")
    record = _submit(sw, demo_slice, tmp_path / "p", checkpoint="last")
    assert record["checkpoint"] == "last" and record["options"]["checkpoint"] == "last"
    test = read_test_table(DataSpec(root=str(demo_slice), in_chans=1))
    for folder in sorted(p for p in sw.iterdir() if (p / "member.json").is_file()):
        model = read_manifest(folder).model_group
        ids, probs = _oof_of(tmp_path / "p", model)
        expect = _expected(folder, folder / "checkpoints" / "last.ckpt", _val_table(demo_slice, folder))
        assert sorted(ids) == sorted(expect)
        np.testing.assert_allclose(probs, np.stack([expect[i] for i in ids]), atol=1e-5)
        val_ids, val_probs, _ = read_predictions(folder / "val_predictions.csv")
        best = dict(zip(val_ids, val_probs))
        assert np.abs(probs - np.stack([best[i] for i in ids])).max() > 1e-2  # not best's val_predictions.csv
        t_ids, t_probs, _ = read_predictions(tmp_path / "p" / "test" / f"{safe_name(model)}__{policy_key(NONE)}.csv")
        expect_test = _expected(folder, folder / "checkpoints" / "last.ckpt", test)
        np.testing.assert_allclose(t_probs, np.stack([expect_test[i] for i in t_ids]), atol=1e-5)


def test_export_refuses_a_predict_folder_made_with_last(two_members: Path, demo_slice: Path, tmp_path: Path) -> None:
    sw = copy_members(two_members, tmp_path / "sw")
    _submit(sw, demo_slice, tmp_path / "p", checkpoint="last")
    with pytest.raises(MemberError, match="checkpoint=last"):
        export_ensemble(str(sw), tmp_path / "export", tmp_path / "p")
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())


def test_best_is_unchanged_and_recorded(two_members: Path, demo_slice: Path, tmp_path: Path) -> None:
    sw = copy_members(two_members, tmp_path / "sw")
    record = _submit(sw, demo_slice, tmp_path / "p")
    assert record["checkpoint"] == "best"
    for folder in sorted(p for p in sw.iterdir() if (p / "member.json").is_file()):
        ids, probs = _oof_of(tmp_path / "p", read_manifest(folder).model_group)
        val_ids, val_probs, _ = read_predictions(folder / "val_predictions.csv")
        best = dict(zip(val_ids, val_probs))
        np.testing.assert_allclose(probs, np.stack([best[i] for i in ids]), atol=1e-5)  # training's own outputs


def test_the_cache_does_not_serve_best_for_last(two_members: Path, demo_slice: Path, tmp_path: Path) -> None:
    sw = copy_members(two_members, tmp_path / "sw")
    _submit(sw, demo_slice, tmp_path / "best")  # fills each member's predictions/ with best's files
    cached = sorted(p.name for p in sw.glob("*/predictions/val-*.csv"))
    _submit(sw, demo_slice, tmp_path / "last", checkpoint="last")
    after = sorted(p.name for p in sw.glob("*/predictions/val-*.csv"))
    assert len(after) == 2 * len(cached) == 4  # one more file per member, under last.ckpt's hash
    folder = next(p for p in sorted(sw.iterdir()) if (p / "member.json").is_file())
    ids, probs = _oof_of(tmp_path / "last", read_manifest(folder).model_group)
    expect = _expected(folder, folder / "checkpoints" / "last.ckpt", _val_table(demo_slice, folder))
    np.testing.assert_allclose(probs, np.stack([expect[i] for i in ids]), atol=1e-5)
    again = _submit(sw, demo_slice, tmp_path / "best2")  # and best is still served best's
    assert again["oof_source"] == {policy_key(NONE): dict.fromkeys(again["members"], "predicted")}
    np.testing.assert_array_equal(_oof_of(tmp_path / "best2", read_manifest(folder).model_group)[1],
                                  _oof_of(tmp_path / "best", read_manifest(folder).model_group)[1])


def test_a_member_without_last_ckpt_is_refused_before_anything_runs(
    two_members: Path, demo_slice: Path, tmp_path: Path
) -> None:
    sw = copy_members(two_members, tmp_path / "sw")
    victim = sorted(p for p in sw.iterdir() if (p / "member.json").is_file())[1]
    (victim / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ConfigError) as err:
        _submit(sw, demo_slice, tmp_path / "p", checkpoint="last")
    message = str(err.value)
    assert "\n" not in message and victim.name in message and str(victim / "checkpoints" / "last.ckpt") in message
    assert not list(sw.glob("*/predictions/*.csv")) and not (tmp_path / "p" / "predict.json").exists()


def test_mode_submit_with_last_never_reads_val_predictions(two_members: Path, demo_slice: Path, tmp_path: Path) -> None:
    """Inference only: best may fall back on val_predictions.csv (best's OOF rows), last may not."""
    sw = copy_members(two_members, tmp_path / "sw")
    members, _ = find_members(sw)
    best = _submit(sw, demo_slice, tmp_path / "b", mode="submit")
    assert set(best["oof_source"][policy_key(NONE)].values()) == {"val_predictions.csv"}
    last = _submit(sw, demo_slice, tmp_path / "l", mode="submit", checkpoint="last")
    assert last["oof_source"] == {} and last["checkpoint"] == "last"  # no OOF rows of last: none are invented
    assert len(at_checkpoint(members, "last")) == 2


def test_unknown_value_and_identical_last_are_named(
    two_members: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sw = copy_members(two_members, tmp_path / "sw")
    members, _ = find_members(sw)
    with pytest.raises(ConfigError, match=r"checkpoint='worst'; accepted: best \| last"):
        at_checkpoint(members, "worst")
    shutil.copyfile(members[0].path / "checkpoints" / "best.ckpt", members[0].path / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="pipeline.member.folder"):
        chosen = at_checkpoint(members, "last")
    assert [m.checkpoint.name for m in chosen] == ["last.ckpt", "last.ckpt"]
    assert [r.getMessage() for r in caplog.records if members[0].name in r.getMessage() and "same bytes" in
            r.getMessage()] and not [r for r in caplog.records if members[1].name in r.getMessage()]


def test_the_config_key_is_validated() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.cli.validate import validate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            ok = compose(config_name="predict", overrides=["checkpoint=last", "logger=none"])
            bad = compose(config_name="predict", overrides=["checkpoint=final", "logger=none"])
    finally:
        GlobalHydra.instance().clear()
    validate(ok, "predict")
    with pytest.raises(ConfigError, match=r"checkpoint='final'; accepted: best \| last"):
        validate(bad, "predict")
