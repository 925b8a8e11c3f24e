"""Finding members: completed member folders from a sweep folder, a glob or a list of folders.

Member folders are untrusted input (a downloaded Kaggle data set, a colleague's export): a member's
name must be one safe path component (:func:`~pipeline.member.manifest.check_member_name`) and every
file read from the folder, the checkpoint named in ``member.json`` included, must resolve inside it
(symlinks too), so a crafted ``member.json`` cannot make inference read or write elsewhere.
"""

from __future__ import annotations

import filecmp
import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.core.errors import ConfigError, MemberError
from pipeline.member.manifest import MANIFEST, MemberManifest, check_member_name, read_manifest

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS", "LAST_CHECKPOINT", "Member", "at_checkpoint", "find_members", "inside"]

CHECKPOINTS = ("best", "last")
"""The ``checkpoint`` setting of predict: ``best`` is the file ``member.json`` names (``checkpoints/best.ckpt``,
chosen by the monitor on the member's own validation rows, or an export's ``model.safetensors``); ``last`` is
the end of training (:data:`LAST_CHECKPOINT`), whose OOF rows did not choose it."""

LAST_CHECKPOINT = "checkpoints/last.ckpt"


def inside(folder: Path, relative: str | Path, what: str) -> Path:
    """``folder / relative`` if it resolves (symlinks followed) inside ``folder``; else a :class:`MemberError`.

    Args:
        folder: The folder the path must stay in.
        relative: A path from untrusted input, relative to ``folder``.
        what: What the path is, for the message (``"checkpoint in member.json"``).
    """
    root = folder.resolve()
    path = folder / relative
    if not path.resolve().is_relative_to(root):
        raise MemberError(
            f"{folder}: {what} {str(relative)!r} resolves to {path.resolve()}, outside the member folder; "
            "only files inside the member folder are read."
        )
    return path


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
        """The weights file ``member.json`` names; it must resolve inside the member folder."""
        return inside(self.path, self.manifest.checkpoint, "checkpoint in member.json")

    def file(self, name: str) -> Path:
        """A file of the member folder (``eval_transform.json``...), refused if a symlink leads outside it."""
        return inside(self.path, name, "file")


def at_checkpoint(members: Sequence[Member], which: str) -> list[Member]:
    """The members predicted with checkpoint ``which`` (:data:`CHECKPOINTS`): ``best`` leaves them as they are.

    ``last`` points each member's manifest at ``checkpoints/last.ckpt``, so everything keyed by the weights
    (the prediction cache's checkpoint hash, the model loaded with ``weights_only``) follows that file.

    Raises:
        ConfigError: ``which`` is not in :data:`CHECKPOINTS`, or a member has no ``checkpoints/last.ckpt``
            (exports and kits carry only the best weights); checked for every member before returning.
        MemberError: ``last.ckpt`` resolves outside its member folder.
    """
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={which!r}; accepted: {' | '.join(CHECKPOINTS)}.")
    if which == "best":
        return list(members)
    out = []
    for m in members:
        chosen = Member(m.path, replace(m.manifest, checkpoint=LAST_CHECKPOINT))
        if not chosen.checkpoint.is_file():
            raise ConfigError(f"checkpoint=last: member {m.name} has no {chosen.checkpoint} (exported members and kits "
                              "carry only their best weights); use checkpoint=best or the trained member folder.")
        if m.checkpoint.is_file() and filecmp.cmp(m.checkpoint, chosen.checkpoint, shallow=False):
            log.warning("Member %s: %s holds the same bytes as %s (Lightning 2.6 writes last.ckpt only when the "
                        "monitor improves): checkpoint=last predicts it with its best weights.", m.name,
                        chosen.checkpoint, m.checkpoint)
        out.append(chosen)
    return out


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
            else:  # a sweep folder (or an export): its member sub-folders
                folders.extend(sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()))
    return folders, looked


def _check_member(member: Member) -> None:
    """The untrusted-folder rules: a safe name and a checkpoint inside the folder that exists."""
    check_member_name(member.name, member.path / MANIFEST)
    if not member.checkpoint.is_file():
        raise MemberError(f"Member {member.path} has no checkpoint: expected {member.checkpoint}.")


def find_members(spec: str | Path | Sequence[str | Path]) -> tuple[list[Member], dict[str, str]]:
    """Completed members for ``spec``, and the skipped folders with the reason each was skipped.

    Raises:
        MemberError: when no completed member is found (the message says where it looked), when the
            members' class lists differ (it names the members of each class list), when two folders hold
            members of the same name, or when a member breaks the untrusted-folder rules (unsafe name,
            checkpoint missing or outside its folder).
    """
    folders, looked = _expand(spec)
    members: list[Member] = []
    skipped: dict[str, str] = {}
    seen: set[Path] = set()
    for folder in folders:
        if folder.resolve() in seen:  # the same folder named twice (a sweep and a glob over it)
            continue
        seen.add(folder.resolve())
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
        _check_member(member)
        members.append(member)
    if not members:
        detail = "".join(f"\n  {k}: {v}" for k, v in skipped.items())
        raise MemberError(f"No completed members found. Looked in: {', '.join(looked)}.{detail}")
    by_name: dict[str, list[str]] = {}
    for m in members:
        by_name.setdefault(m.name, []).append(str(m.path))
    if clashes := {n: p for n, p in by_name.items() if len(p) > 1}:
        raise MemberError(f"Several folders hold members of the same name (names key every output file): {clashes}")
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for m in members:
        by_classes.setdefault(tuple(m.manifest.classes), []).append(m.name)
    if len(by_classes) > 1:
        groups = "; ".join(f"{list(k)} ← {v}" for k, v in by_classes.items())
        raise MemberError(f"Members have different class lists and cannot be ensembled: {groups}")
    return members, skipped
