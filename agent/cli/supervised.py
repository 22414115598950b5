"""Orphans step aside: an agent process whose supervisord died notices it and leaves,
and a newly supervised process waits for an orphan that still holds its lock.

``kill -9`` of supervisord leaves its children running (reparented, their logs going
nowhere). Nothing is lost, but a new supervisord cannot start the agent while they hold
the poller lock and the worker ids. So each supervised process watches its parent: when
it changes, or supervisor's socket is gone, the poller stops claiming and exits, and a
worker takes no new run, finishes watching its current one (or leaves it to adoption)
and exits. A new process finding the lock held by a process that is not its
supervisord's child waits for it, says so in its log, and (the poller) in
``poller.waiting.json`` for `agent status`, instead of exiting into FATAL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from agent.spool.files import read_json_object, replace_file_durably
from agent.spool.locks import is_locked

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0


def supervised(environ: Mapping[str, str]) -> bool:
    return environ.get("SUPERVISOR_ENABLED") == "1"


def socket_path(environ: Mapping[str, str]) -> Path | None:
    """supervisord's unix socket, from SUPERVISOR_SERVER_URL (``unix:///run/x.sock``)."""
    url = environ.get("SUPERVISOR_SERVER_URL") or ""
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "unix" and parts.path else None


class ParentWatch:
    """Tells, once, that the supervisord that started this process is gone."""

    def __init__(
        self,
        parent: int,
        sock: Path | None,
        getppid: Callable[[], int] = os.getppid,
        exists: Callable[[Path], bool] = os.path.exists,
    ) -> None:
        self.parent, self.sock = parent, sock
        self._getppid, self._exists = getppid, exists

    def orphaned(self) -> str | None:
        """Why this process is an orphan, or None while its supervisord is there."""
        now = self._getppid()
        if now != self.parent:
            return f"supervisord (pid {self.parent}) is gone: this process's parent is now {now}"
        if self.sock is not None and not self._exists(self.sock):
            return f"supervisord's socket {self.sock} is gone"
        return None

    def start(self, on_orphan: Callable[[str], None], every: float = CHECK_SECONDS) -> None:
        def watch() -> None:
            while True:
                time.sleep(every)
                reason = self.orphaned()
                if reason:
                    on_orphan(reason)
                    return

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def watch_parent(environ: Mapping[str, str], on_orphan: Callable[[str], None]) -> None:
    """Under supervisord: call ``on_orphan(reason)`` once, when it is gone."""
    if supervised(environ):
        ParentWatch(os.getppid(), socket_path(environ)).start(on_orphan)


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, from /proc (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command name, which may hold ")"
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def orphan_holder(state_file: Path, environ: Mapping[str, str]) -> int | None:
    """The pid recorded in ``state_file`` when it is a live process that this process's
    supervisord did not start (an orphan of an earlier one); None otherwise. Only a
    supervised process asks: by hand, a held lock is an error, as ever."""
    if not supervised(environ):
        return None
    pid = (read_json_object(state_file) or {}).get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid == os.getpid():
        return None
    parent = parent_of(pid)
    return pid if parent is not None and parent != os.getppid() else None


def wait_while_orphan_holds(
    lock: Path,
    state_file: Path,
    what: str,
    environ: Mapping[str, str],
    note: Path | None = None,
    poll: float = 0.5,
) -> None:
    """Return once ``lock`` is free, or held by someone who is no orphan (then taking it
    fails as it always did). While an orphan holds it, wait: said once in the log, and
    in ``note`` meanwhile."""
    said = False
    try:
        while is_locked(lock):
            holder = orphan_holder(state_file, environ)
            if holder is None:
                return
            if not said:
                log.warning(
                    "%s is held by pid %d, left running by a supervisord that died; "
                    "waiting for it to finish and exit",
                    *(what, holder),
                )
                if note is not None:
                    body = {"pid": os.getpid(), "waiting_for": holder, "since": time.time()}
                    with contextlib.suppress(OSError):
                        replace_file_durably(note, json.dumps(body).encode())
                said = True
            time.sleep(poll)
        if said:
            log.info("%s is free now: starting", what)
    finally:
        if note is not None and said:
            with contextlib.suppress(OSError):
                note.unlink()
