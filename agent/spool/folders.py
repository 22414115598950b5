"""The spool's folders: where each is, making them (again, should the spool be deleted
under a running agent), and the poller's write probe. Moves of specs between them are
agent/spool/moves.py's alone."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.core.errors import SpoolError
from agent.spool.locks import POLLER_LOCK, keep_lock

log = logging.getLogger(__name__)

TMP, NEW, CUR, DONE, FAILED, RUNS = "tmp", "new", "cur", "done", "failed", "runs"
STATE_DIRS = (TMP, NEW, CUR, DONE, FAILED)
SUFFIX = ".json"


class Folders:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._poller_lock = -1  # the poller's lock fd, kept in place by probe()

    def dir(self, state: str) -> Path:
        return self.root / state

    def ensure(self) -> None:
        """Create the folders, owner-only, and check they share one filesystem."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for name in (*STATE_DIRS, RUNS):
                self.dir(name).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool {self.root}: {exc}") from exc
        devices = {os.stat(self.dir(name)).st_dev for name in STATE_DIRS}
        if len(devices) != 1:
            raise SpoolError(f"spool {self.root}: tmp/new/cur/done must be on one filesystem")

    def heal(self) -> bool:
        """Re-create the folders if the spool (or part of it) was deleted under a running
        agent; True when something was missing. Nothing then needs a restart."""
        if all(self.dir(name).is_dir() for name in (*STATE_DIRS, RUNS)):
            return False
        self.ensure()
        return True

    def probe(self) -> str | None:
        """The poller's look at the spool every poll: re-create it if it was deleted, keep
        the poller's lock in place, then try writing a byte where specs are written ahead:
        None, or why it failed (a full disk passes `writable()` but fails here)."""
        path = self.dir(TMP) / f".probe.{os.getpid()}"
        try:
            if self.heal():
                log.warning("spool %s was missing: re-created it", self.root)
            self._keep_poller_lock()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                path.unlink(missing_ok=True)
        except OSError as exc:
            return f"cannot write: {exc.strerror}"
        except SpoolError as exc:  # from heal(): the folders cannot be made
            return str(exc)
        return None

    def writable(self) -> bool:
        return os.access(self.dir(TMP), os.W_OK) and os.access(self.dir(NEW), os.W_OK)

    def hold_poller_lock(self, fd: int) -> None:
        """The poller's lock (agent/spool/locks.py): `probe` takes it again if the spool
        was deleted, so that `agent status` still sees the poller alive."""
        self._poller_lock = fd

    def _keep_poller_lock(self) -> None:
        if self._poller_lock >= 0:
            self._poller_lock = keep_lock(self.root / POLLER_LOCK, self._poller_lock)
