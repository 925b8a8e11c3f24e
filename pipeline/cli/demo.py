"""``pipeline-demo-data``: write the bundled Fashion-MNIST subset as a Kaggle-style competition folder.

With ``--task multilabel|ordinal|regression|binary`` it writes that task's small demo competition instead
(:mod:`pipeline.data.task_demos`) and prints how balanced its training and hidden test targets are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.entry import quiet_closed_pipe

__all__ = ["main"]

_TASKS = ("multilabel", "ordinal", "regression", "binary")  # pipeline.data.task_demos.TASK_DEMOS, without importing it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the Fashion-MNIST demo competition folder, or with --task a "
                                                 "small competition of another task.")
    parser.add_argument("--task", choices=_TASKS, default=None,
                        help="write this task's demo competition (default: the multiclass Fashion-MNIST demo)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the folder (default: data/fashion-mnist-demo, or data/<the task's folder> with --task)")
    parser.add_argument("--force", action="store_true", help="rewrite even if the folder is complete")
    parser.add_argument("--n-train", type=int, default=None,
                        help="keep only the first N training images (a quick slice); with --task: N rows (600)")
    parser.add_argument("--n-test", type=int, default=None,
                        help="keep only the first N test images; with --task: N rows (200)")
    parser.add_argument("--seed", type=int, default=None, help="with --task: the seed of every random draw (0)")
    return parser


def _task_demo(args: argparse.Namespace) -> None:
    import pandas as pd

    from pipeline.core.errors import PipelineError
    from pipeline.data.task_demos import TASK_DEMOS, describe_targets, write_task_demo

    given = {"n_train": args.n_train, "n_test": args.n_test, "seed": args.seed}
    sizes = {k: v for k, v in given.items() if v is not None}
    try:
        out = write_task_demo(args.task, args.out, force=args.force, **sizes)
    except PipelineError as err:
        raise SystemExit(f"pipeline-demo-data: {err}") from None
    target = TASK_DEMOS[args.task].target_col
    for name, csv in (("train", "train.csv"), ("test (hidden)", "solution.csv")):
        column = pd.read_csv(out / csv, dtype={target: str}, keep_default_na=False)[target]
        print(f"{name}: {describe_targets(args.task, column)}")
    print(f"{args.task} demo competition ready at {out}")


@quiet_closed_pipe()
def main(argv: list[str] | None = None) -> None:
    """Console entry point ``pipeline-demo-data``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.task is not None:
        _task_demo(args)
        return
    if args.seed is not None:
        parser.error("--seed needs --task (the Fashion-MNIST demo draws nothing at random)")
    from pipeline.data.demo import DEFAULT_OUT, prepare_demo

    out_dir = args.out if args.out is not None else DEFAULT_OUT
    out = prepare_demo(out_dir, force=args.force, n_train=args.n_train, n_test=args.n_test)
    print(f"Demo competition ready at {out}")


if __name__ == "__main__":
    main()
