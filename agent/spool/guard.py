"""The spool trusts nothing it finds: flows run as the agent's user and can write there.

A spec is opened only as a regular file: ``O_NOFOLLOW`` (a symlink is refused, never
followed), ``O_NONBLOCK`` (a FIFO does not block the open), then ``fstat`` checks the type
on the descriptor itself, so nothing swapped in between a look and the open gets through.
Anything else named like a spec (a directory, a FIFO, a socket, a symlink) is moved aside
to ``failed/`` with a ``.reason`` note; its run is not touched (the name is all it says).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path

from agent.spool.files import fsync_dir, replace_file_durably

log = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """Something that is not a regular file sits where a spec should be."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", str(path))
        self.path, self.kind = path, kind


def kind_of(mode: int) -> str:
    """In words, for the reason note and the log."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path) -> int:
    """An fd of ``path`` opened read-only, or NotRegularFile (FileNotFoundError passes)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        # ELOOP: a symlink under O_NOFOLLOW; ENXIO: a socket; the others name the type.
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP):
            raise NotRegularFile(path, _lstat_kind(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(path, kind_of(mode))
    return fd


def read_regular(path: Path, limit: int = 1 << 24) -> bytes:
    """The bytes of a regular file (at most ``limit``), never blocking on what it is."""
    fd = open_regular(path)
    try:
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


def _lstat_kind(path: Path) -> str:
    try:
        return kind_of(os.lstat(path).st_mode)
    except OSError:
        return "not a regular file"


def set_aside(path: Path, failed_dir: Path, kind: str) -> Path | None:
    """Move a non-regular entry named like a spec to failed/ (a rename moves a symlink
    itself, never its target), with ``<name>.reason``; returns where it went, or None
    when it was gone already. A name taken in failed/ gets a suffix: never overwrite."""
    if not path.name.endswith(".json"):
        raise ValueError(f"not a spec name: {path.name}")
    stem = path.name[: -len(".json")]
    dst = failed_dir / path.name
    if os.path.lexists(dst):
        stem = f"{stem}.{time.time_ns()}"
        dst = failed_dir / f"{stem}.json"
    reason = (
        f"Not a spec: {kind} named like one was found in {path.parent.name}/; moved aside "
        "untouched (only regular files are read from the spool)"
    )
    try:
        replace_file_durably(failed_dir / f"{stem}.reason", reason.encode())
        os.rename(path, dst)
    except FileNotFoundError:
        (failed_dir / f"{stem}.reason").unlink(missing_ok=True)
        return None  # moved by another process meanwhile
    fsync_dir(failed_dir)
    log.error("%s: %s; moved to failed/", path, reason)
    return dst


def set_aside_logged(exc: NotRegularFile, failed_dir: Path) -> None:
    """`set_aside` what `open_regular` refused; a failure is logged, never raised."""
    try:
        set_aside(exc.path, failed_dir, exc.kind)
    except OSError as err:
        log.error("%s is %s and cannot be moved aside: %s", exc.path, exc.kind, err)


def screen(folder: Path, failed_dir: Path) -> list[Path]:
    """Set aside every entry of ``folder`` named like a spec that is not a regular file
    (lstat only: nothing is opened). Returns where each went."""
    moved: list[Path] = []
    odd: list[tuple[Path, int]] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if not e.name.endswith(".json") or e.name.startswith("."):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False):
                        odd.append((Path(e.path), e.stat(follow_symlinks=False).st_mode))
                except FileNotFoundError:
                    continue  # moved while we looked
    except FileNotFoundError:
        return moved
    for path, mode in odd:
        try:
            dst = set_aside(path, failed_dir, kind_of(mode))
        except OSError as exc:
            log.error("%s is not a regular file and cannot be moved aside: %s", path, exc)
            continue
        if dst is not None:
            moved.append(dst)
    return moved
