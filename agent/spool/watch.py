"""A wake-up for a process waiting on a spool folder: ``wait`` returns as soon as an
entry is added to the folder (the poller publishes a spec to new/ by a hard link), or
when ``poke`` is called (a stop signal), or after its timeout.

Linux inotify, through ctypes: the standard library has no binding, and a library for
one call is not worth a dependency. Where inotify is unavailable (another OS, the
per-user instance limit reached, a folder that cannot be watched) ``wait`` is a plain
sleep of the timeout: a waiting worker's periodic look at the folder still finds the
spec, later. Waking is a hint, never a result: whoever wakes looks at the folder itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import time
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_IGNORED = 0x00008000  # the watch is gone: the folder was deleted (or unmounted)
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018  # present (Linux)?
    except (OSError, AttributeError):
        return None
    return libc


class FolderWatch:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._libc = _libc()
        self._fd = -1
        self._wd = -1
        self._said = False
        # poke() writes here: a signal handler's stop ends a wait at once.
        self._poke_r, self._poke_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._libc is None:
            self._unavailable("no inotify on this system")
        else:
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                self._unavailable(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
            else:
                self._fd = fd
        # Closed with the object when the owner never calls close() (a test's worker).
        self._closer = weakref.finalize(self, _close, [self._fd, self._poke_r, self._poke_w])
        self._arm()

    @property
    def active(self) -> bool:
        """The folder is watched now: an added entry ends a wait at once."""
        return self._wd >= 0

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when woken early (an entry added, or a
        poke), False after the timeout. The folder's own deletion wakes nobody: the
        worker re-creates a deleted spool at its next idle look, not while an operator's
        ``rm -r`` is still at work on it."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self._poke_r >= 0:
            self._arm()  # again after the folder was deleted and re-created
            fds = [self._poke_r] + ([self._fd] if self.active else [])
            try:
                ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError):
                return False
            if not ready:
                return False
            if self._poke_r in ready:
                _drain(self._poke_r)
                return True
            added, ended = self._read_events()
            if ended:
                self._wd = -1  # the watch ended with the folder: re-armed by a later wait
            if added:
                return True
        time.sleep(max(0.0, deadline - time.monotonic()))  # closed
        return False

    def poke(self) -> None:
        """End the current or next wait at once. Safe in a signal handler."""
        # OSError: a poke is pending already (EAGAIN), or the watch is closed.
        with contextlib.suppress(OSError):
            os.write(self._poke_w, b"\0")

    def close(self) -> None:
        self._closer()
        self._fd = self._poke_r = self._poke_w = self._wd = -1

    def _arm(self) -> None:
        if self._fd < 0 or self.active or self._libc is None:
            return
        path = os.fsencode(self.folder)
        wd = self._libc.inotify_add_watch(self._fd, path, IN_CREATE | IN_MOVED_TO)
        if wd >= 0:
            self._wd = wd
            self._said = False
        elif ctypes.get_errno() != errno.ENOENT:  # a missing folder is re-created soon
            self._unavailable(f"{self.folder}: {os.strerror(ctypes.get_errno())}")

    def _read_events(self) -> tuple[bool, bool]:
        """Drain the queued events: (an entry may have been added, the watch ended)."""
        added = ended = False
        while True:
            try:
                data = os.read(self._fd, 64 * _EVENT.size + 4096)
            except BlockingIOError:
                return added, ended
            except OSError:
                return True, True
            if not data:
                return added, ended
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                # A full queue (IN_Q_OVERFLOW) may have dropped an entry's event.
                added = added or bool(mask & (IN_CREATE | IN_MOVED_TO | IN_Q_OVERFLOW))
                ended = ended or (wd == self._wd and bool(mask & IN_IGNORED))
                offset += _EVENT.size + length

    def _unavailable(self, why: str) -> None:
        if not self._said:  # said once, not at every wait
            self._said = True
            log.info("no wake-up on new specs (%s): looking every idle period instead", why)


def _close(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
