"""``pipeline-export MEMBERS... --out DIR | --kit DIR``: an ensemble for offline inference, or a whole offline kit."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.entry import quiet_closed_pipe

__all__ = ["main"]


@quiet_closed_pipe()
def main(argv: list[str] | None = None) -> None:
    """Console entry point ``pipeline-export``."""
    parser = argparse.ArgumentParser(
        description="Export members (safetensors + timm config.json + JSON, OOF predictions, fitted weights) for "
                    "offline inference; --kit adds this package's wheel and a predict.py for a notebook without internet.")
    parser.add_argument("members", nargs="+", help="sweep folder(s), member folders or globs")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder to write the exported ensemble to")
    where.add_argument("--kit", type=Path, help="folder to write the offline kit to (members/, wheels/, predict.py)")
    parser.add_argument("--predict-dir", type=Path, default=None,
                        help="a pipeline-predict folder of these members: ship its fitted weights and submission policy")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="with --kit: ship this pipeline-*.whl instead of building one from the source tree")
    args = parser.parse_args(argv)
    if args.wheel is not None and args.kit is None:
        parser.error("--wheel needs --kit")
    from pipeline.core.errors import PipelineError

    try:
        if args.kit is not None:
            from pipeline.predict.kit import build_kit

            print(f"Offline kit written: {build_kit(args.members, args.kit, args.predict_dir, args.wheel)}")
            return
        from pipeline.member.export import export_ensemble

        for path in export_ensemble(args.members, args.out, args.predict_dir):
            print(f"exported {path}")
    except (PipelineError, FileNotFoundError) as err:
        raise SystemExit(f"pipeline-export: {err}") from None


if __name__ == "__main__":
    main()
