"""Finding members: completed member folders from a sweep folder, a glob or a list of folders."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import MemberError
from pipeline.member.manifest import MANIFEST, MemberManifest, read_manifest

__all__ = ["Member", "find_members"]


@dataclass
class Member:
    """A completed member folder on disk."""

    path: Path
    manifest: MemberManifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def checkpoint(self) -> Path:
        return self.path / self.manifest.checkpoint


def _expand(spec: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Candidate member folders for a sweep folder, a glob, or an explicit list; plus where we looked."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    folders: list[Path] = []
    looked: list[str] = []
    for item in items:
        text = str(item)
        looked.append(text)
        if glob.has_magic(text):  # a glob names folders; files it also matches (folds.csv…) are not members
            matches = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_dir()]
        else:
            matches = [Path(text)]
        for path in matches:
            if (path / MANIFEST).is_file() or not path.is_dir():
                folders.append(path)
            else:  # a sweep folder: its member sub-folders
                folders.extend(sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()))
    return folders, looked


def find_members(spec: str | Path | Sequence[str | Path]) -> tuple[list[Member], dict[str, str]]:
    """Completed members for ``spec``, and the skipped folders with the reason each was skipped.

    Raises:
        MemberError: when no completed member is found (the message says where it looked), or when
            the members' class lists differ (it names the members of each class list).
    """
    folders, looked = _expand(spec)
    members: list[Member] = []
    skipped: dict[str, str] = {}
    for folder in folders:
        if not folder.exists():
            skipped[str(folder)] = "does not exist"
            continue
        try:
            manifest = read_manifest(folder)
        except MemberError as err:
            skipped[str(folder)] = str(err)
            continue
        if manifest.status != "completed":
            skipped[str(folder)] = f"status {manifest.status}"
            continue
        member = Member(folder, manifest)
        if not member.checkpoint.is_file():
            raise MemberError(f"Member {folder} has no checkpoint: expected {member.checkpoint}.")
        members.append(member)
    if not members:
        detail = "".join(f"\n  {k}: {v}" for k, v in skipped.items())
        raise MemberError(f"No completed members found. Looked in: {', '.join(looked)}.{detail}")
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for m in members:
        by_classes.setdefault(tuple(m.manifest.classes), []).append(m.name)
    if len(by_classes) > 1:
        groups = "; ".join(f"{list(k)} ← {v}" for k, v in by_classes.items())
        raise MemberError(f"Members have different class lists and cannot be ensembled: {groups}")
    return members, skipped
