"""The console scripts: answer ``--help`` at once, otherwise hand over to the command's Hydra ``main``.

Importing Hydra takes about a quarter of a second and composing its help several seconds; the help
here reads the config folders instead (:mod:`pipeline.cli.help`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

from pipeline.cli.help import print_help_if_asked

__all__ = ["train", "predict", "report", "quiet_closed_pipe"]

_COMMANDS = {
    "train": ("pipeline-train", "train one ensemble member (or a sweep of them with -m) into member folders."),
    "predict": ("pipeline-predict", "member folders → TTA × ensemble → a validated submission file."),
    "report": ("pipeline-report", "what the ensemble and TTA bought, with intervals and inference cost."),
}


# Why a command runs once: Hydra's multirun would fail deep inside (predict has no `seed` to sweep) and leave multirun/.
_ONE_RUN = {
    "predict": "it predicts every member of a sweep in one run; list TTA policies in one run (policies=[none,hflip]) "
               "or run it once per setting, with its own predict_dir",
    "report": "it reports one predict folder; run it once per predict_dir",
}


def _refuse_multirun(command: str, argv: list[str]) -> None:
    """End a command that runs once when asked for a sweep, before Hydra creates any folder."""
    if command in _ONE_RUN and {"-m", "--multirun"} & set(argv):
        sys.exit(f"Error: {_COMMANDS[command][0]} does not take -m/--multirun: {_ONE_RUN[command]}.")


@contextlib.contextmanager
def quiet_closed_pipe() -> Iterator[None]:
    """End the command without a traceback when the reader of its output goes away (``... --help | head -1``)."""
    try:
        try:
            yield
        finally:  # also after argparse's --help, which exits with the text still buffered
            sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and fail once more, so stdout is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _start(command: str) -> None:
    app, summary = _COMMANDS[command]
    with quiet_closed_pipe():
        if not print_help_if_asked(app, command, summary):
            _refuse_multirun(command, sys.argv[1:])
            importlib.import_module(f"pipeline.cli.{command}").main()


def train() -> None:
    """``pipeline-train``."""
    _start("train")


def predict() -> None:
    """``pipeline-predict``."""
    _start("predict")


def report() -> None:
    """``pipeline-report``."""
    _start("report")
