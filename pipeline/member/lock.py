"""One writer per member folder: an OS file lock held while a member trains.

Two trainings of the same member at once (two terminals, a sweep relaunched while the first still runs)
would write the same checkpoints and manifest: one then fails with a misleading missing-checkpoint error
and the completed member keeps the other's ``error.txt``. :func:`member_lock` takes an exclusive
``fcntl.flock`` on ``<member>/.train.lock``; the second run stops at once, before it writes anything,
with :class:`MemberBusy` naming the folder and the process that holds it. The OS releases the lock when
its process dies, however it dies, so a killed run never leaves the folder locked.

The lock file is removed on release, and so are the folders the lock itself had to create (when they are
still empty), so a run refused by a later check leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import MemberError

__all__ = ["LOCK_FILE", "MemberBusy", "member_lock"]

LOCK_FILE = ".train.lock"
"""The lock file inside a member folder (holds the holder's host and pid, for the message)."""


class MemberBusy(MemberError):
    """Another process is training this member folder right now; nothing was written."""


def _open_locked(path: Path) -> int:
    """Open ``path`` and lock it; retried when the holder removed the file between our open and our lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockingIOError(err.errno, "locked") from err
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a file its holder had just unlinked: lock the new one


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return f" (held by {text})" if text else ""


@contextlib.contextmanager
def member_lock(member_dir: str | Path) -> Iterator[None]:
    """Hold the member folder's training lock for the block.

    Raises:
        MemberBusy: another process holds it; the message names the folder and that process.
    """
    member_dir = Path(member_dir)
    created = [p for p in (member_dir, *member_dir.parents) if not p.exists()]
    member_dir.mkdir(parents=True, exist_ok=True)
    path = member_dir / LOCK_FILE
    try:
        fd = _open_locked(path)
    except BlockingIOError:
        raise MemberBusy(
            f"Member folder {member_dir} is being trained by another process{_holder(path)}. Wait for it to "
            f"finish (a rerun then skips or resumes the member), or stop it; the lock ({path}) goes with its process."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before unlocking: a waiter that opened this file sees it is gone and retries
        os.close(fd)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
