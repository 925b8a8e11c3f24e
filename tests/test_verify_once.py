"""No repeated work: images are verified once per data set, never for skipped members, and in parallel threads."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import pipeline.data.decode as decode_mod
import pipeline.predict.loader
import pipeline.train.fit
from pipeline.core.errors import DataError
from pipeline.data.decode import load_rgb, verify_images
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_train_table
from tests.conftest import compose_train
from tests.helpers import TINY_CLASSES, train, write_competition


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image decoded from now on (verification, training, caches and prediction all go through load_rgb)."""
    seen: list[str] = []

    def counting_load_rgb(path: str | Path, *args: Any) -> np.ndarray:
        seen.append(str(path))
        return load_rgb(path, *args)

    monkeypatch.setattr(decode_mod, "load_rgb", counting_load_rgb)
    monkeypatch.setattr(pipeline.predict.loader, "load_rgb", counting_load_rgb)
    return seen


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every table verification actually decoded."""
    calls: list[int] = []
    original: Callable[..., Any] = decode_mod._decode_all

    def counting(table: Any, workers: int) -> Any:
        calls.append(len(table))
        return original(table, workers)

    monkeypatch.setattr(decode_mod, "_decode_all", counting)
    return calls


def test_verified_once_then_recorded_and_a_changed_file_verifies_again(tmp_path: Path, decodes: list[str]) -> None:
    root = write_competition(tmp_path / "comp")
    table = read_train_table(DataSpec(root=str(root)))
    record = tmp_path / "sweep"
    assert len(verify_images(table, False, workers=2, record_dir=record)) == len(table)
    assert sorted(decodes) == sorted(map(str, table.paths))  # each image once, in 2 threads
    (written,) = record.glob("verified-*.json")
    decodes.clear()
    assert len(verify_images(table, False, workers=2, record_dir=record)) == len(table)
    assert decodes == []  # recorded: nothing decoded
    first = table.paths[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    verify_images(table, False, record_dir=record)
    assert len(decodes) == len(table)  # one file changed: the table is verified anew
    assert len(list(record.glob("verified-*.json"))) == 2 and written.is_file()


def test_a_recorded_bad_image_is_skipped_or_refused_without_decoding(tmp_path: Path, decodes: list[str]) -> None:
    root = write_competition(tmp_path / "comp")
    table = read_train_table(DataSpec(root=str(root)))
    bad = table.paths[3]
    bad.write_bytes(b"not an image")
    record = tmp_path / "sweep"
    with pytest.raises(DataError, match=f"Cannot decode image {bad}.*skip_bad_images"):
        verify_images(table, False, workers=2, record_dir=record)
    assert not list(record.glob("verified-*.json"))  # a refused table is not recorded
    kept = verify_images(table, True, workers=2, record_dir=record)
    assert len(kept) == len(table) - 1 and bad not in kept.paths
    decodes.clear()
    again = verify_images(table, True, workers=0, record_dir=record)
    assert decodes == [] and again.paths == kept.paths  # the same rows dropped, from the record
    with pytest.raises(DataError, match=f"Cannot decode image {bad}.*skip_bad_images"):
        verify_images(table, False, record_dir=record)
    assert decodes == []


def test_parallel_and_serial_verification_agree(tmp_path: Path) -> None:
    root = write_competition(tmp_path / "comp", classes=TINY_CLASSES, per_class=5)
    table = read_train_table(DataSpec(root=str(root)))
    for i in (1, 7):
        table.paths[i].write_bytes(b"\x89PNG broken")
    serial, parallel = verify_images(table, True, workers=0), verify_images(table, True, workers=3)
    assert serial.paths == parallel.paths and len(serial) == len(table) - 2


@pytest.mark.slow
def test_rerun_of_a_finished_sweep_decodes_no_image(
    demo_slice: Path, tmp_path: Path, decodes: list[str], verifications: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_slice, data)
    verify_calls: list[int] = []

    def spy(table: Any, *args: Any) -> Any:
        verify_calls.append(len(table))
        return verify_images(table, *args)

    monkeypatch.setattr(pipeline.train.fit, "verify_images", spy)

    def member(seed: int) -> Any:
        cfg = compose_train([
            "trainer=cpu", "logger=none", "model=lenet5", f"data.root={data}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.limit_train_batches=2", "data.num_workers=0",
            "data.batch_size=32", f"paths.root={tmp_path}", f"seed={seed}",
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "sweep" / cfg.member_name)
        return cfg

    try:
        for seed in (0, 1):
            train(member(seed))
        assert verifications == [600]  # the second member found the first one's record
        assert verify_calls == [600, 600]
        assert decodes  # training itself decoded images
        decodes.clear()
        for seed in (0, 1):  # the same sweep again: both members are complete
            metrics = train(member(seed))
            assert metrics["val_acc"] >= 0
        assert decodes == [] and verifications == [600]
        assert verify_calls == [600, 600]  # completed members are skipped before verification is even asked
    finally:
        GlobalHydra.instance().clear()
