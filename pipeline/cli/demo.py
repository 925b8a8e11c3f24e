"""``pipeline-demo-data``: write the bundled Fashion-MNIST subset as a Kaggle-style competition folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.entry import quiet_closed_pipe

__all__ = ["main"]


@quiet_closed_pipe()
def main(argv: list[str] | None = None) -> None:
    """Console entry point ``pipeline-demo-data``."""
    from pipeline.data.demo import DEFAULT_OUT, prepare_demo

    parser = argparse.ArgumentParser(description="Write the Fashion-MNIST demo competition folder.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="rewrite even if the folder is complete")
    parser.add_argument("--n-train", type=int, default=None, help="keep only the first N training images (a quick slice)")
    parser.add_argument("--n-test", type=int, default=None, help="keep only the first N test images")
    args = parser.parse_args(argv)
    out = prepare_demo(args.out, force=args.force, n_train=args.n_train, n_test=args.n_test)
    print(f"Demo competition ready at {out}")


if __name__ == "__main__":
    main()
