"""Durable writes and tolerant reads of the spool's small files.

A spec or report is written whole under a temporary name, fsynced and renamed, so that a
reader never sees half a file, and a crash never leaves one under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively, owner-only, write every byte, fsync, close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        # A partial file must go even if close fails too (some filesystems report a
        # full disk at close).
        with contextlib.suppress(OSError):
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def replace_file_durably(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` (write a temp name beside it, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    write_file_durably(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        # The temp name carries our pid: no other process would ever remove it.
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from one of the agent's small state files, or None if it is missing,
    half-written or not an object: readers never fail on another process's file."""
    try:
        # Non-blocking and regular files only: a FIFO planted here must not hang a reader
        # (`agent status` above all).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        body = json.loads(os.pread(fd, 1 << 24, 0))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return body if isinstance(body, dict) else None
