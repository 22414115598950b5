"""Locks on the spool (one poller per spool, worker leases' liveness probes) and the
poller's state file that `agent status` reads."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from agent.core.errors import SpoolError
from agent.spool.files import read_json_object

log = logging.getLogger(__name__)

POLLER_LOCK = "poller.lock"
POLLER_STATE = "poller.json"
# A new poller waiting for an orphan of a dead supervisord (agent/cli/supervised.py).
POLLER_WAITING = "poller.waiting.json"


def hold_lock(path: Path, wait: float = 1.0) -> int | None:
    """Take an exclusive flock on ``path`` for the caller's life (returns the fd), or None
    if a live process holds it. Liveness probes (``is_locked``) hold a shared lock for an
    instant, so retry briefly before deciding someone else has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.01)


def keep_lock(path: Path, fd: int) -> int:
    """The fd to keep holding ``path``'s lock: ``fd`` while ``path`` is still its file; a
    new lock when the file was deleted (with the spool) and perhaps made again. The old
    fd stays open: its owner closes it at exit."""
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except FileNotFoundError:
        pass
    new = hold_lock(path, wait=0.0)
    if new is None:
        log.error("%s: another process holds the lock of the re-created spool", path)
        return fd
    log.warning("%s was gone (the spool was deleted?): locked it again", path)
    return new


def is_locked(path: Path) -> bool:
    """True while some live process holds ``path``'s flock (the kernel drops it at death)."""
    try:
        # O_NONBLOCK: a FIFO planted under a lock's name must not hang the probe.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # not a file that can be locked
    finally:
        os.close(fd)  # closing drops our probe lock, if we got it
    return False


def lock_poller(root: Path) -> int:
    """One poller per spool: hold ``poller.lock`` for the process's life (returns the fd)."""
    fd = hold_lock(root / POLLER_LOCK)
    if fd is None:
        raise SpoolError(f"another poller is already using spool {root}")
    return fd


def poller_alive(root: Path) -> bool:
    return is_locked(root / POLLER_LOCK)


def write_poller_state(root: Path, state: dict[str, object]) -> None:
    """What the poller last did, for `agent status`. Replaced atomically but not fsynced:
    it is written every poll and losing the last copy in a power cut costs nothing."""
    path = root / POLLER_STATE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(json.dumps(state, sort_keys=True).encode())
        while view:  # a nearly full disk can take part of a write
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # never a truncated copy in place of the last good one
        raise
    os.close(fd)
    os.replace(tmp, path)


def read_poller_state(root: Path) -> dict[str, Any] | None:
    """The poller's last state file, or None if missing or unreadable."""
    return read_json_object(root / POLLER_STATE)
