"""One validation pass over the composed config: the command lines refuse a bad config in one line, writing nothing.

Each refused case runs the real console script and checks the exit status, the message (naming the key
and what is accepted), that no traceback is shown, and that no file under the test's folder was written
or changed. The accepted forms (``+trainer.<Trainer argument>``, ``+model.kwargs.*``, ``member_chunk_size=
{name: n}``, ``trainer.max_epochs=-1``) are composed as the command lines compose them and pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from pipeline.cli import CONF_DIR
from pipeline.cli.config import register
from pipeline.cli.validate import ValidateConfig, validate
from pipeline.core.errors import ConfigError
from tests.conftest import copy_members
from tests.test_bad_inputs_predict import snapshot
from tests.test_sweep import failure_message

BIN = Path(sys.executable).parent


def cli(command: str, args: Sequence[str], cwd: Path, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """``pipeline-<command> args`` in ``cwd``, outputs under ``cwd/out``; ``python``: code run before the command."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PIPELINE_OUTPUTS": str(cwd / "out"), "WANDB_MODE": "offline"}
    if python is None:
        cmd = [str(BIN / f"pipeline-{command}"), *args]
    else:
        start = (f"{python}\nimport sys\nsys.argv = ['pipeline-{command}', *sys.argv[1:]]\n"
                 f"from pipeline.cli import entry\nentry.{command}()")
        cmd = [sys.executable, "-c", start, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def refused(command: str, args: Sequence[str], root: Path, match: str, python: str | None = None) -> str:
    """Run the command in ``root``; it exits 1 with one line matching ``match``, and nothing under ``root`` changed."""
    before = snapshot(root)
    proc = cli(command, args, root, python)
    assert proc.returncode == 1, failure_message(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, failure_message(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.search(match, errors[0]), failure_message(proc)
    assert snapshot(root) == before
    return errors[0]


TRAIN = [
    ("misspelt group added with +", ["+ensembel=auto"], r"Unknown config key ensembel .*Did you mean ensemble\?"),
    ("misspelt group key added with +", ["+optimzer.lr=0.5"], r"Unknown config key optimzer .*Did you mean optimizer\?"),
    ("unknown Trainer argument", ["+trainer.acumulate_grad_batches=4"],
     r"trainer.acumulate_grad_batches .*Did you mean trainer.accumulate_grad_batches\?.*pytorch_lightning.Trainer"),
    ("unknown optimizer argument", ["+optimizer.momentun=0.9"], r"optimizer.momentun .*arguments of torch.optim.AdamW"),
    ("negative lr", ["optimizer.lr=-0.1"], r"optimizer.lr=-0.1: the learning rate must be a positive number"),
    ("non-numeric lr", ["optimizer.lr=fast"], r"optimizer.lr='fast' is not a number"),
    ("non-numeric seed", ["seed=abc"], r"seed='abc' is not an integer"),
    ("fractional max_epochs", ["trainer.max_epochs=1.5"], r"trainer.max_epochs=1.5 is not an integer.*-1 for no epoch limit"),
    ("negative max_epochs", ["trainer.max_epochs=-3"], r"trainer.max_epochs=-3; accepted: an integer ≥ 1"),
    ("no epoch limit with cosine", ["trainer.max_epochs=-1"], r"scheduler.T_max follows it"),
    ("crop larger than image", ["data.crop_size=40"], r"data.image_size=32, data.crop_size=40"),
]


@pytest.mark.parametrize(("args", "match"), [c[1:] for c in TRAIN], ids=[c[0] for c in TRAIN])
def test_train_refuses_a_bad_config_before_any_folder(tmp_path: Path, args: list[str], match: str) -> None:
    refused("train", ["logger=none", *args], tmp_path, match)
    assert not (tmp_path / "out").exists()


PREDICT = [
    ("misspelt flip", ["tta.flip=horizonal"], r"tta.flip='horizonal'; accepted: horizontal \| vertical \| none"),
    ("misspelt key added with +", ["+ensembel=auto"], r"Did you mean ensemble\?"),
    ("member_chunk_size not a mapping", ["member_chunk_size=16"], r"member_chunk_size=16: give a mapping"),
    ("negative given weight over the experiment", ["experiment=demo", "ensemble=weighted", "ensemble.given_weights=[1,-1]"],
     r"ensemble.given_weights=\[1.0, -1.0\]; accepted: one non-negative number per member"),
    ("all-zero given weights over the experiment", ["experiment=demo", "ensemble=weighted", "ensemble.given_weights=[0,0]"],
     r"ensemble.given_weights=\[0.0, 0.0\]; accepted"),
    ("SLURM without srun", ["distribute=slurm"], r"distribute=slurm: `srun` is not on PATH"),
]


@pytest.mark.parametrize(("args", "match"), [c[1:] for c in PREDICT], ids=[c[0] for c in PREDICT])
def test_predict_refuses_a_bad_config_before_any_folder(tmp_path: Path, args: list[str], match: str) -> None:
    refused("predict", ["logger=none", *args], tmp_path, match)
    assert not (tmp_path / "out").exists()


def test_report_refuses_an_unknown_key(tmp_path: Path) -> None:
    refused("report", ["+n_bot=10"], tmp_path, r"Unknown config key n_bot .*Did you mean n_boot\?")


# A sys.meta_path finder that makes the named modules look uninstalled (they cannot be uninstalled here).
BLOCK = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r} or name in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""

MISSING = [
    ("train", ["-m", "launcher=ray"], ["ray"], r"launcher=ray needs ray.*pip install 'pipeline\[ray\]'"),
    ("train", ["-m", "launcher=slurm"], ["submitit"], r"launcher=slurm needs submitit.*pip install 'pipeline\[slurm\]'"),
    ("train", ["-m", "hparams_search=optuna"], ["optuna"], r"hparams_search=optuna needs optuna.*'pipeline\[optuna\]'"),
    ("predict", ["distribute=ray"], ["ray"], r"distribute=ray needs ray.*pip install 'pipeline\[ray\]'"),
]


@pytest.mark.parametrize(("command", "args", "blocked", "match"), MISSING, ids=[" ".join(c[1]) for c in MISSING])
def test_a_missing_extra_names_the_pip_install(tmp_path: Path, command: str, args: list[str], blocked: list[str],
                                               match: str) -> None:
    refused(command, ["logger=none", *args], tmp_path, match, python=BLOCK.format(blocked=blocked))


def test_given_weights_that_do_not_fit_the_members_are_refused_over_the_experiment(
    tmp_path: Path, mixed_sweep: Path, demo_slice: Path
) -> None:
    members = copy_members(mixed_sweep, tmp_path / "members")
    refused("predict", ["logger=none", "experiment=demo", "ensemble=weighted", "ensemble.given_weights=[1]",
                        f"members={members}", f"data.root={demo_slice}", f"predict_dir={tmp_path / 'p'}"],
            members, r"given_weights for 2 members: expected 2 weights")
    assert only_hydras_record(tmp_path / "p")


def test_member_chunk_size_of_an_unknown_member_is_refused(tmp_path: Path, mixed_sweep: Path, demo_slice: Path) -> None:
    members = copy_members(mixed_sweep, tmp_path / "members")
    refused("predict", ["logger=none", "member_chunk_size={lenet5-s9-holdout: 16}", f"members={members}",
                        f"data.root={demo_slice}", f"predict_dir={tmp_path / 'p'}"], members,
            r"member_chunk_size names \['lenet5-s9-holdout'\].*accepted: \['lenet5-s0', 'lenet5-s0-holdout'")
    assert only_hydras_record(tmp_path / "p")


def only_hydras_record(predict_dir: Path) -> bool:
    """Refused once members are read: the predict folder holds Hydra's record of the command and its log, nothing else."""
    return {p.relative_to(predict_dir).parts[0] for p in predict_dir.rglob("*") if p.is_file()} == {".hydra", "predict.log"}


def composed(config: str, *overrides: str) -> DictConfig:
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_the_command_line_group_wins_over_the_experiments_and_the_demo_is_unchanged() -> None:
    assert composed("predict", "experiment=demo", "ensemble=weighted").ensemble.weights == "given"
    demo = composed("predict", "experiment=demo").ensemble
    assert demo == composed("predict", "ensemble=caruana").ensemble
    assert (demo.weights, demo.method, demo.caruana_rounds, demo.fit_metric, demo.bags, demo.temperature, demo.combine) == (
        "caruana", "prob_mean", 50, "log_loss", 1, False, "weighted")  # what `ensemble.weights: caruana` gave before


@pytest.mark.parametrize(("config", "overrides"), [
    ("train", ["trainer.accumulate_grad_batches=4", "+trainer.gradient_clip_algorithm=norm", "+model.kwargs.drop_rate=0.1",
               "++seed=3"]),
    ("train", ["trainer.max_epochs=-1", "scheduler=none", "+callbacks.extra={_target_: x.Y}"]),
    ("train", ["experiment=demo"]),
    ("train", ["hparams_search=optuna"]),
    ("predict", ["member_chunk_size={resnet50-s0: 16}", "experiment=demo", "tta.flip=vertical"]),
    ("report", ["experiment=demo"]),
])
def test_accepted_forms_pass(config: str, overrides: list[str]) -> None:
    validate(composed(config, *overrides), config)


def test_no_epoch_limit_is_said_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    ValidateConfig("train")._check(composed("train", "trainer.max_epochs=-1", "scheduler=none"))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["trainer.max_epochs=-1: no epoch limit; training runs until early stopping, trainer.max_steps "
                     "or trainer.max_time stops it."]


def test_a_sweep_jobs_own_value_is_checked_in_the_job() -> None:
    with pytest.raises(ConfigError, match=r"optimizer.lr=0"):
        validate(composed("train", "optimizer.lr=0"), "train")


TASK_KEYS = [
    ("misspelt task", ["data.task=regresion"],
     r"data.task='regresion'; accepted: auto \| multiclass \| binary \| multilabel \| regression \| ordinal\."),
    ("range low above high", ["data.target_range=[4,1]"], r"data.target_range=\[4.0, 1.0\]; accepted: \[low, high\]"),
    ("range of one number", ["data.target_range=[1]"], r"data.target_range=\[1.0\]; accepted: \[low, high\], two numbers"),
    ("repeated label column", ["data.label_cols=[a,a]"], r"data.label_cols=\['a', 'a'\]; accepted: a list of distinct"),
    ("empty tag separator", ["data.tag_sep=''"], r"data.tag_sep=''; accepted: the separator of the tags"),
    ("both multi-label layouts", ["data.label_cols=[a,b]", "data.tag_sep=' '"],
     r"data.label_cols and data.tag_sep are both set: .* set one of them\."),
]


@pytest.mark.parametrize(("overrides", "match"), [c[1:] for c in TASK_KEYS], ids=[c[0] for c in TASK_KEYS])
@pytest.mark.parametrize("command", ["train", "predict"])
def test_bad_task_keys_are_refused_before_anything_runs(command: str, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(composed(command, *overrides), command)
    validate(composed(command, "data.task=ordinal", "data.target_range=[0,4]"), command)  # the accepted forms pass
    validate(composed(command, "data.task=multilabel", "data.label_cols=[a,b]"), command)
    validate(composed(command, "data.tag_sep=' '"), command)
