"""Shared by the full-disk spool tests (test_spool_enospc_writes,
test_spool_enospc_retire, test_spool_enospc_poller): ENOSPC as the OS raises it, a
FillingDisk that stands in for os.write and fails part-way through a file, a spec big
enough to be cut short, the spool's folders listed with their dot-files, and an fsync of
one folder made to fail."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.spool import files as spool_files
from agent.spool import moves as spool_module
from agent.spool.moves import STATE_DIRS, Spool

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
REAL_WRITE = os.write
SPEC = b'{"run": "r1", "padding": "' + b"x" * 10_000 + b'"}'


def enospc() -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE)


class FillingDisk:
    """Stands in for os.write: stores the first ``room`` bytes for real, then fails with
    ENOSPC, as a disk that fills up mid-file does. ``partial`` records the size each
    file had when its write failed."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.partial: list[int] = []

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.room <= 0:
            self.partial.append(os.fstat(fd).st_size)
            raise enospc()
        written = REAL_WRITE(fd, bytes(data[: self.room]))
        self.room -= written
        return written


def entries(spool: Spool, state: str) -> list[str]:
    """Every name in a state folder, dot-files (temp names) included."""
    return sorted(os.listdir(spool.dir(state)))


def everything(spool: Spool) -> dict[str, list[str]]:
    return {state: entries(spool, state) for state in STATE_DIRS}


def fail_fsync_of(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make fsync of ``folder`` (a directory) fail with ENOSPC; other fsyncs work."""
    real = spool_files.fsync_dir

    def fsync_dir(path: Path) -> None:
        if path == folder:
            raise enospc()
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
