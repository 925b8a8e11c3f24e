"""A quick ``--help`` for the command lines, answered before Hydra (or anything heavy) is imported.

Hydra's own ``--help`` composes the configuration and deep-copies its config store once per config
group, which took seconds; this lists the same config groups from the config folders on disk and
shows the primary config file. ``--cfg job`` prints the composed config; ``--hydra-help`` Hydra's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import CONF_DIR

__all__ = ["print_help_if_asked", "config_groups", "groups_read"]


def _user_config_dirs(argv: Sequence[str]) -> list[Path]:
    """Folders given with ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR``."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def groups_read(primary: Path) -> set[str]:
    """The config groups a command reads: its primary config's defaults that pick an option, and the empty
    slots after ``_self_`` (``experiment``, ``hparams_search``), which exist to be picked. Empty slots before
    ``_self_`` only let one experiment file serve every command; this command ignores those groups."""
    import yaml

    read, after_self = set(), False
    for entry in yaml.safe_load(primary.read_text()).get("defaults", []):
        if entry == "_self_":
            after_self = True
        elif isinstance(entry, dict):
            ((key, option),) = entry.items()
            group = key.split()[-1].lstrip("/")  # "optional x", "override /x"
            if option is not None or after_self:
                read.add(group)
    return read


def config_groups(dirs: Sequence[Path], only: set[str] | None = None) -> dict[str, list[str]]:
    """Config group → its options (YAML file stems), over every folder, user folders included.

    ``only`` keeps those groups; schema bases (``base_*``, the dataclass links) are never listed.
    """
    groups: dict[str, set[str]] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for path in root.rglob("*.yaml"):
            if path.parent == root or path.stem.startswith("base_"):
                continue
            group = path.parent.relative_to(root).as_posix()
            if (only is None or group in only) and not group.split("/")[-1].startswith("base_"):
                groups.setdefault(group, set()).add(path.stem)
    return {g: sorted(options) for g, options in sorted(groups.items())}


def print_help_if_asked(app: str, config_name: str, summary: str, argv: Sequence[str] | None = None) -> bool:
    """Print the help and return True when ``argv`` asks for ``--help`` (or ``-h``); else return False."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not {"--help", "-h"} & set(args):
        return False
    dirs = [CONF_DIR, *_user_config_dirs(args)]
    primary = CONF_DIR / f"{config_name}.yaml"
    lines = [
        f"{app}: {summary}", "",
        f"Usage: {app} [--config-dir DIR] [-m] [group=option ...] [key=value ...]", "",
        "== Config groups (group=option) ==",
    ]
    lines += [f"{group}: {', '.join(options)}" for group, options in config_groups(dirs, groups_read(primary)).items()]
    lines += ["", f"== Primary config ({primary}) ==", primary.read_text().rstrip(), "",
              f"`{app} [overrides] --cfg job` prints the composed config; `--hydra-help` lists Hydra's own flags;",
              "`--config-dir DIR` adds your own config folder (e.g. DIR/experiment/mycomp.yaml → experiment=mycomp)."]
    print("\n".join(lines))
    return True
