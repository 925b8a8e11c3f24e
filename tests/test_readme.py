"""The README holds: its commands exist and answer ``--help``, its overrides compose, its snippets run, its links resolve."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from pipeline.cli import CONF_DIR
from pipeline.data.demo import prepare_demo

REPO = CONF_DIR.parent.parent
README = REPO / "README.md"
BIN = Path(sys.executable).parent
HYDRA_COMMANDS = {"pipeline-train": "train", "pipeline-predict": "predict", "pipeline-report": "report"}
CONSOLE = {*HYDRA_COMMANDS, "pipeline-export", "pipeline-demo-data"}
# Commands that are not ours, each with where it is checked instead.
ELSEWHERE = {"python": "the kit's predict.py: tests/test_offline.py", "wandb": "W&B's own command", "git": "the clone",
             "python3": "the system Python", "pip": "the install: tests/test_wheel.py installs the wheel"}


def _blocks(language: str, text: str | None = None) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text() if text is None else text, re.M | re.S)


def _commands() -> list[list[str]]:
    """Every command of the README's ``bash`` blocks, continuation lines joined, comments dropped, as words."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                words[0] = Path(words[0].lstrip("!")).name  # `.venv/bin/pipeline-train`, a notebook's `!python`
                commands.append(words)
    return commands


def test_the_readme_has_commands_and_snippets_to_check() -> None:
    names = {words[0] for words in _commands()}
    assert CONSOLE <= names and "make" in names, names
    assert len(_blocks("python")) >= 2


def test_every_command_is_known_and_every_make_target_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    for words in _commands():
        if words[0] == "make":
            assert set(words[1:]) <= targets, f"{words}: no such Makefile target (have {sorted(targets)})"
        else:
            assert words[0] in CONSOLE or words[0] in ELSEWHERE, f"README command {words[0]!r} is neither ours nor known"


@pytest.mark.parametrize("command", sorted(CONSOLE))
def test_every_console_command_exists_and_answers_help(command: str) -> None:
    path = shutil.which(command, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{command} is not installed next to {sys.executable}"
    proc = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(rf"(usage|Usage): {command}\b", proc.stdout), proc.stdout[:500]


def _overrides(words: list[str]) -> tuple[list[str], list[str]]:
    """(config folders given with --config-dir, overrides) of a Hydra command; a sweep's lists give their first value."""
    dirs, overrides = [], []
    for i, word in enumerate(words[1:], start=1):
        if words[i - 1] in ("--config-dir", "-cd"):
            dirs.append(str(REPO / word))
        elif "=" in word and not word.startswith("-"):
            key, value = word.split("=", 1)
            overrides.append(f"{key}={value.split(',')[0]}" if "-m" in words and "[" not in value else word)
    return dirs, overrides


HYDRA_LINES = [words for words in _commands() if words[0] in HYDRA_COMMANDS]


@pytest.mark.parametrize("words", HYDRA_LINES, ids=[" ".join(w)[:80] for w in HYDRA_LINES])
def test_every_override_in_the_readme_composes(words: list[str]) -> None:
    dirs, overrides = _overrides(words)
    searchpath = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]"] if dirs else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(HYDRA_COMMANDS[words[0]], overrides=[*searchpath, *overrides], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    for override in overrides:
        key, value = override.split("=", 1)
        if "." in key and not value.startswith("["):  # a value, not a group choice: it landed where the README says
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert str(node) == value, f"{override}: composed to {node!r}"


def test_the_wheel_the_readme_names_is_the_one_pip_builds() -> None:
    version = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text())
    named = set(re.findall(r"pipeline-([^-\s]+)-py3-none-any\.whl", README.read_text()))
    assert version and named == {version.group(1)}, named


def test_python_snippets_compile() -> None:
    for snippet in _blocks("python"):
        compile(snippet, "README.md", "exec")


@pytest.mark.slow
def test_the_python_api_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippet runs unchanged on a 300-image slice of the demo competition, written where it looks for it."""
    (snippet,) = [s for s in _blocks("python") if "pipeline.train_member" in s]
    prepare_demo(tmp_path / "data" / "fashion-mnist-demo", n_train=300, n_test=40)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert len(submission) == 40 and list(submission.columns) == ["id", "label"]
    weights = namespace["weights"]
    assert weights.shape == (2,) and abs(float(weights.sum()) - 1) < 1e-6  # type: ignore[attr-defined]
    for seed in (0, 1):
        assert (tmp_path / "outputs" / "api" / "main" / f"lenet5-s{seed}-holdout" / "model.safetensors").is_file()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


DOCS = [README, REPO / "conf" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_relative_link_points_to_an_existing_file(doc: Path) -> None:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)  # links inside code are not links
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        if path and not (doc.parent / path).exists():
            broken.append(target)
        elif not path and anchor not in anchors:
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links to nothing: {broken}"


def test_export_refuses_a_wheel_that_is_not_a_wheel_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.export import main

    (tmp_path / "notes.txt").write_text("not a wheel")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--kit", str(tmp_path / "kit"), "--wheel", str(tmp_path / "notes.txt")])
    message = str(stop.value.code)
    assert "notes.txt" in message and ".whl" in message and "\n" not in message
    assert not (tmp_path / "kit").exists()
