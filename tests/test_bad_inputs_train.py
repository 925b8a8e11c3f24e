"""Bad settings and damaged member folders for the training stage: refused before anything is written,
failed members recorded (never completed or exported), reruns after a fix that just work, and files
that are never left half-written: temporary files of killed writers, umask-respecting modes, W&B's
bounded fallback against a silent endpoint.

Each case checks (a) the exception type, (b) a message naming the cause (key, value, file), and
(c) what the member folder holds afterwards (status, ``error.txt``, no ``folds.csv``, no temp files).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from pipeline.cli.train import train_spec
from pipeline.core.errors import ConfigError, DataError, MemberError, OutputError, TrainError
from pipeline.core.io import AtomicFile, clean_stale_temps, write_json
from pipeline.member.manifest import read_manifest, write_manifest
from pipeline.member.weights import load_state_dict
from pipeline.models.factory import create_model
from pipeline.train.fit import MemberConflict, train_member
from pipeline.train.module import NonFiniteLossError
from tests.conftest import compose_train
from tests.helpers import copy_competition, files_under, temp_files, train, write_competition

STEPS_PER_EPOCH = 4  # 19 training rows of the tiny competition's holdout, batch 4, drop_last


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_competition(tmp_path_factory.mktemp("tiny") / "comp")


@pytest.fixture
def make_cfg(tmp_path: Path, tiny: Path) -> Callable[..., DictConfig]:
    """Tiny CPU members (lenet5 on 24 greyscale 32×32 images) writing into ``tmp_path/sweep/member``."""

    def make(*overrides: str, root: Path | None = None) -> DictConfig:
        cfg = compose_train([
            "trainer=cpu", "logger=none", "model=lenet5", f"data.root={root or tiny}", "data.image_size=32",
            "data.crop_size=28", "data.in_chans=1", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", f"paths.root={tmp_path}", *overrides,
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "sweep" / "member")
        return cfg

    return make


def only_error_recorded(tmp_path: Path) -> None:
    """A member that failed before training: its folder holds error.txt alone; the sweep has no folds.csv."""
    member = tmp_path / "sweep" / "member"
    assert sorted(p.name for p in member.iterdir()) == ["error.txt"]
    assert not (tmp_path / "sweep" / "folds.csv").exists()
    assert not temp_files(tmp_path)


def global_step(member: Path) -> int:
    return int(torch.load(member / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])


# --- refused before anything is written ---------------------------------------------------------------

BEFORE_TRAINING = [
    ("batch_larger_than_rows", ["data.batch_size=64"], TrainError,
     r"data\.batch_size=64 is larger than the 19 training rows of the holdout split: the training loader drops an "
     r"incomplete last batch \(drop_last=True\), so no optimiser step would run\. Set data\.batch_size to at most 19"),
    ("no_train_batches", ["trainer.limit_train_batches=0"], TrainError,
     r"trainer\.limit_train_batches=0: no optimiser step would run"),
    ("zero_epochs", ["trainer.max_epochs=0"], TrainError, r"trainer\.max_epochs=0: no optimiser step would run"),
    ("no_validation_batches", ["trainer.limit_val_batches=0"], TrainError,
     r"trainer\.limit_val_batches=0: validation would never run.*out-of-fold predictions"),
    ("validation_after_the_last_epoch", ["+trainer.check_val_every_n_epoch=3"], TrainError,
     r"trainer\.check_val_every_n_epoch=3 is larger than trainer\.max_epochs=1"),
    ("kfold_class_too_small", ["data.n_folds=10"], DataError,
     r"stratified 10-fold needs at least 10 rows of every class.*'Bag' \(8 rows\)"),
    ("fold_out_of_range", ["data.n_folds=3", "data.fold=3"], DataError, r"data\.fold=3 is out of range: accepted 0\.\.2"),
    ("holdout_fraction", ["data.holdout_fraction=1.0"], DataError, r"data\.holdout_fraction=1\.0 must lie strictly"),
    ("unknown_model", ["model.name=lenet55"], ConfigError, r"Unknown timm model 'lenet55'\. Closest: lenet5\b.*model\.name"),
    ("input_too_small", ["data.image_size=12", "data.crop_size=8"], ConfigError,
     r"8×8 is too small for 'lenet5'.*at least 16×16"),
    ("crop_larger_than_image", ["data.image_size=24", "data.crop_size=28"], ConfigError,
     r"data\.crop_size=28 is larger than data\.image_size=24.*data\.crop_size <= data\.image_size"),
    ("num_classes_mismatch", ["data.num_classes=7"], DataError, r"data\.num_classes=7 contradicts the data"),
    ("missing_data_root", ["data.root={tmp}/nowhere"], DataError, r"nowhere does not exist \(config key data\.root\)"),
    ("missing_weights_file", ["model.weights={tmp}/nope.pth"], ConfigError,
     r"Weights file not found: .*nope\.pth \(model\.weights; accepted suffixes"),
    ("weights_file_not_a_checkpoint", ["model.weights={tmp}/garbage.pth"], ConfigError,
     r"Cannot load .*garbage\.pth: it is not a checkpoint that loads with weights_only=True \(unsupported pickle "
     r"operand 110\); it may be corrupt.*do not switch weights_only off"),
    ("bad_batch_size", ["data.batch_size=0"], ConfigError, r"data\.batch_size=0 must be a positive integer"),
    ("learning_rate_not_set", ["optimizer.lr=null"], ConfigError, r"optimizer\.lr=None must be set to a finite number"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), [c[1:] for c in BEFORE_TRAINING], ids=[c[0] for c in BEFORE_TRAINING])
def test_refused_before_anything_is_written(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, overrides: list[str], error: type[Exception], match: str
) -> None:
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    cfg = make_cfg(*(o.format(tmp=tmp_path) for o in overrides))
    with pytest.raises(error, match=match):
        train(cfg)
    only_error_recorded(tmp_path)
    assert re.search(match, (tmp_path / "sweep" / "member" / "error.txt").read_text().splitlines()[0])


# --- failed members are never completed, and reruns after a fix just work ------------------------------


def opaque_trainer(**settings: Any) -> Callable[..., pl.Trainer]:
    """A trainer factory the library cannot look into (not a partial): only the backstop can catch it."""

    def make(**kwargs: Any) -> pl.Trainer:
        return pl.Trainer(**{"accelerator": "cpu", "devices": 1, "max_epochs": 1,
                             "enable_model_summary": False, **settings, **kwargs})

    return make


@pytest.mark.parametrize(("settings", "match"), [
    ({"limit_train_batches": 0}, r"Training ran no optimiser step \(trainer\.global_step == 0\)"),
    ({"limit_val_batches": 0}, r"Validation never ran, so the member has no validation score"),
])
def test_training_without_progress_is_a_failed_member_not_an_exported_one(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, settings: dict[str, Any], match: str
) -> None:
    spec = train_spec(make_cfg())
    spec.trainer = opaque_trainer(**settings)
    with pytest.raises(TrainError, match=match):
        train_member(spec)
    member = tmp_path / "sweep" / "member"
    assert read_manifest(member).status == "failed"
    assert (member / "error.txt").read_text().startswith("TrainError: Member member failed:")
    for never in ("model.safetensors", "metrics.json", "val_predictions.csv", "checkpoints"):
        assert not (member / never).exists(), never  # discarded: a rerun must not resume a run that never trained
    spec.trainer = opaque_trainer()  # the fix: a trainer that trains and validates
    assert train_member(spec)["n_val"] == 5
    assert read_manifest(member).status == "completed" and not (member / "error.txt").exists()


def test_diverging_loss_fails_the_member_and_a_fixed_rerun_trains_it_afresh(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    with pytest.raises(NonFiniteLossError, match=r"Non-finite training loss .*Lower the learning rate \(optimizer\.lr\)"):
        train(make_cfg("optimizer.lr=1e30"))
    member = tmp_path / "sweep" / "member"
    assert read_manifest(member).status == "failed"
    assert (member / "error.txt").read_text().startswith("NonFiniteLossError: Non-finite training loss")
    assert not (member / "model.safetensors").exists() and not (member / "metrics.json").exists()
    # Another learning rate is another config; the failed member holds nothing usable, so no overwrite=true needed.
    train(make_cfg("optimizer.lr=1e-3"))
    assert read_manifest(member).status == "completed" and not (member / "error.txt").exists()
    assert global_step(member) == STEPS_PER_EPOCH  # trained from scratch, not resumed from the diverged run


@pytest.mark.parametrize("fix", [["data.skip_bad_images=true"], ["data.skip_bad_images=true", "overwrite=true"]],
                         ids=["same_command_fixed", "with_overwrite"])
def test_rerun_after_a_failed_data_check_just_works(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, tiny: Path, fix: list[str]
) -> None:
    root = copy_competition(tiny, tmp_path / "comp")
    bad = root / "train" / "tr1003.png"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(DataError, match=r"Cannot decode image .*tr1003\.png.*data\.skip_bad_images=true"):
        train(make_cfg(root=root))
    only_error_recorded(tmp_path)
    metrics = train(make_cfg(*fix, root=root))
    member = tmp_path / "sweep" / "member"
    assert read_manifest(member).status == "completed" and not (member / "error.txt").exists()
    assert metrics["n_val"] == 5 and "tr1003" not in (member / "folds.csv").read_text()


def test_member_folder_with_another_config_is_refused_untouched_and_overwrite_retrains_from_scratch(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    member = tmp_path / "sweep" / "member"
    train(make_cfg("trainer.max_epochs=2"))
    assert global_step(member) == 2 * STEPS_PER_EPOCH
    before = files_under(member)
    with pytest.raises(MemberConflict, match=r"Member folder .*member holds a member trained with a different config "
                                             r"\(hash \w+ != \w+\)\. Use another sweep_name, or overwrite=true"):
        train(make_cfg("optimizer.lr=0.01"))
    assert files_under(member) == before and not (member / "error.txt").exists()
    train(make_cfg("optimizer.lr=0.01", "overwrite=true"))
    # Not resumed from the other config's checkpoint (which had already run 2 epochs): a fresh single epoch.
    assert global_step(member) == STEPS_PER_EPOCH
    assert read_manifest(member).status == "completed"


class Payload:
    """Pickles as a call to ``open(marker, "w")``: loading the checkpoint without weights_only would create the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_crafted_resume_checkpoint_is_refused_before_anything_is_written(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    member = tmp_path / "sweep" / "member"
    train(make_cfg())
    manifest = read_manifest(member)
    manifest.status = "running"  # as if killed: the next run resumes from last.ckpt
    write_manifest(member, manifest)
    marker = tmp_path / "payload-ran"
    last = member / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {}, "payload": Payload(marker)}, last)
    before = {k: v for k, v in files_under(member).items() if k not in ("member.json", "error.txt")}
    with pytest.raises(MemberError) as info:
        train(make_cfg())
    message = str(info.value)
    assert f"Refusing to load {last}: it references io.open" in message
    assert "do not switch weights_only off" in message and f"Delete {last} to train this member from scratch" in message
    assert "weights_only=False" not in message  # torch's advice is not repeated
    assert not marker.exists()
    assert read_manifest(member).status == "failed" and "Refusing to load" in (member / "error.txt").read_text()
    assert "weights_only=False" not in (member / "error.txt").read_text()
    assert {k: v for k, v in files_under(member).items() if k not in ("member.json", "error.txt")} == before
    # The same rule, the same words, wherever a checkpoint is loaded: member weights and fine-tuning sources.
    with pytest.raises(MemberError, match=rf"Refusing to load {last}: it references io\.open.*do not switch"):
        load_state_dict(last)
    weights = tmp_path / "source.pth"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, weights)
    with pytest.raises(ConfigError, match=r"Refusing to load .*source\.pth: it references io\.open.*do not switch"):
        create_model("lenet5", num_classes=3, in_chans=1, weights=weights)
    assert not marker.exists()


def test_unwritable_member_folder_names_the_folder(make_cfg: Callable[..., DictConfig]) -> None:
    """A member folder this process may not write (another user's, or chmod -w): refused before any work."""
    base = Path(tempfile.mkdtemp(prefix="ro-member-"))
    try:
        os.chmod(base, 0o755)
        member = base / "sweep" / "member"
        member.mkdir(parents=True)
        os.chmod(member, 0o555)
        spec = train_spec(make_cfg())
        spec.member_dir = member
        with unprivileged_process(), pytest.raises(OutputError) as info:
            train_member(spec)
        assert f"Cannot write to the output folder {member}" in str(info.value) and "not writable" in str(info.value)
        assert info.value.path == member
        assert list(member.iterdir()) == []
    finally:
        os.chmod(base / "sweep" / "member", 0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)


class unprivileged_process:  # noqa: N801 (a context manager used like a function)
    """Run the block as user ``nobody`` when this process is root (root ignores permission bits)."""

    def __enter__(self) -> None:
        self.was_root = os.geteuid() == 0
        if self.was_root:
            os.setegid(65534)
            os.seteuid(65534)

    def __exit__(self, *exc: object) -> None:
        if self.was_root:
            os.seteuid(0)
            os.setegid(0)


# --- nothing half-written: temporary files, file modes ------------------------------------------------

_WRITER = """
import os, signal, sys, time
from pipeline.core.io import AtomicFile
f = AtomicFile(sys.argv[1])
f.tmp.write_text("half a file")
print(f.tmp, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # no chance to clean up, as with an OOM kill or a node failure
time.sleep(120)
"""


@pytest.fixture
def writers() -> Iterator[Callable[[Path, str], tuple[subprocess.Popen[str], Path]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(target: Path, how: str) -> tuple[subprocess.Popen[str], Path]:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), how], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        tmp = Path(proc.stdout.readline().strip())
        if how == "kill":
            proc.wait(timeout=60)
        return proc, tmp

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_temp_files_of_killed_writers_are_cleaned_and_live_ones_kept(
    tmp_path: Path, writers: Callable[[Path, str], tuple[subprocess.Popen[str], Path]]
) -> None:
    killed, dead_tmp = writers(tmp_path / "val_predictions.csv", "kill")
    assert killed.returncode == -signal.SIGKILL and dead_tmp.is_file()
    live, live_tmp = writers(tmp_path / "member.json", "live")
    old = time.time() - 3 * 24 * 3600
    foreign_new = tmp_path / ".folds.csv.otherhost.123.0a1b2c3d.tmp"  # another host on a shared disk: unknown writer
    foreign_old = tmp_path / ".folds.csv.otherhost.124.0a1b2c3e.tmp"
    legacy_old = tmp_path / ".summary.csv.k2j4h5g6.tmp"  # tempfile.mkstemp's name, from an earlier version
    for path in (foreign_new, foreign_old, legacy_old):
        path.write_text("x")
    for path in (foreign_old, legacy_old):
        os.utime(path, (old, old))
    unrelated = tmp_path / ".keep.tmp"
    unrelated.write_text("not ours")
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_tmp, foreign_old, legacy_old])
    assert live_tmp.is_file() and foreign_new.is_file() and unrelated.is_file()
    live.kill()
    live.wait()
    assert clean_stale_temps(tmp_path) == [live_tmp]
    assert not (tmp_path / "val_predictions.csv").exists()  # the target was never half-written


def test_training_cleans_stale_temp_files_at_member_start(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, writers: Callable[[Path, str], tuple[subprocess.Popen[str], Path]]
) -> None:
    member = tmp_path / "sweep" / "member"
    (member / "predictions").mkdir(parents=True)
    dead = [writers(target, "kill")[1] for target in (member / "member.json", member / "predictions" / "test-none-x.csv",
                                                      tmp_path / "sweep" / "folds.csv")]
    _, live = writers(member / "metrics.json", "live")
    train(make_cfg())
    assert not any(p.exists() for p in dead)
    assert live.is_file()  # a concurrent writer's file is never touched
    assert read_manifest(member).status == "completed"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
        target = AtomicFile(tmp_path / "y.csv")
        target.tmp.write_text("id\n")
        target.commit()
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "y.csv").stat().st_mode & 0o777 == mode


def test_a_members_files_are_readable_by_teammates(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        train(make_cfg())
    finally:
        os.umask(old)
    member = tmp_path / "sweep" / "member"
    for name in ("member.json", "config.yaml", "folds.csv", "metrics.json", "val_predictions.csv", "model.safetensors",
                 "model.json", "eval_transform.json", "checkpoints/best.ckpt"):
        assert (member / name).stat().st_mode & 0o777 == 0o644, name  # mkstemp would have made them 0600
    assert (tmp_path / "sweep" / "folds.csv").stat().st_mode & 0o777 == 0o644


# --- W&B: the fallback against an endpoint that accepts connections and never answers ------------------

_WANDB_CHILD = """
import sys, time
from pathlib import Path
import wandb  # imported by every W&B run, online or not: not part of what the fallback adds
from pipeline.core.tracking import LoggerSpec, init_wandb
started = time.time()
run = init_wandb(LoggerSpec(mode="online"), Path(sys.argv[1]), "m", "g", "train", {"a": 1})
run.log({"x": 1.0})
print(run.settings.mode, started, flush=True)
run.finish()
"""


def silent_server(stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """A port on 127.0.0.1 that accepts every connection and never sends a byte (a dead proxy)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []

    def serve() -> None:
        deadline = time.monotonic() + 120  # bounded: stops by itself even if the test never sets `stop`
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("endpoint", ["silent", "refused"])
def test_wandb_unreachable_adds_at_most_10_s_at_start_and_exit(tmp_path: Path, endpoint: str) -> None:
    stop = threading.Event()
    if endpoint == "silent":
        listener, thread = silent_server(stop)
        port = listener.getsockname()[1]
    else:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there: connections are refused
    env = {**os.environ, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}", "WANDB_SILENT": "true",
           "WANDB_DISABLE_GIT": "true"}
    try:
        proc = subprocess.run([sys.executable, "-c", _WANDB_CHILD, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        ended = time.time()
    finally:
        stop.set()
        if endpoint == "silent":
            thread.join(timeout=5)
            listener.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    mode, started = proc.stdout.split()
    added = ended - float(started)  # init + log + finish + the process's exit hooks
    assert mode == "offline"
    print(f"W&B ({endpoint} endpoint) added {added:.1f} s at start and exit")
    assert added < 10, f"W&B added {added:.1f} s"
    assert "logging offline" in proc.stderr and "wandb sync" in proc.stderr
    if endpoint == "silent":
        assert "accepted the connection but sent no answer" in proc.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))
