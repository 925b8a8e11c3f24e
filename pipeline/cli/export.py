"""``pipeline-export MEMBERS... --out DIR``: an ensemble as safetensors + JSON, for offline inference."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``pipeline-export``."""
    parser = argparse.ArgumentParser(description="Export members as safetensors + JSON for offline inference.")
    parser.add_argument("members", nargs="+", help="sweep folder(s), member folders or globs")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the exported ensemble to")
    args = parser.parse_args(argv)
    from pipeline.member.export import export_ensemble

    for path in export_ensemble(args.members, args.out):
        print(f"exported {path}")


if __name__ == "__main__":
    main()
