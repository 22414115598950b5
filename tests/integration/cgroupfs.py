"""Per-test cgroup roots on this host's real cgroup trees, and their removal (with every
process left in them) at teardown, pass or fail."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

from agent.worker import cgroups


def writable_root() -> Path | None:
    """A new, unused cgroup root for one test: in the v2 tree when there is one, else in a
    v1 one; None when this host has no cgroup tree this user may write."""
    found = cgroups.detect(None)
    mounts = cgroups.parse_mounts(Path("/proc/self/mounts").read_text())
    v2 = next((m.path for m in mounts if m.fstype == "cgroup2"), None)
    base = v2 or next((m.path for m in mounts if m.fstype == "cgroup"), None)
    if found.version == "none" or base is None or not os.access(base, os.W_OK):
        return None
    return base / f"la-test-{uuid.uuid4().hex[:12]}"


def remove_tree(root: Path) -> None:
    """Kill every process in ``root``'s cgroups (every hierarchy) and remove them."""
    found = cgroups.detect(root)
    tops = [p for p in [found.v2, *found.v1.values()] if p is not None and p.is_dir()]
    for top in tops:
        for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir() and (directory / "cgroup.procs").exists():
                _empty(directory)
        _empty(top)


def _empty(directory: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            pids = [int(x) for x in (directory / "cgroup.procs").read_text().split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def pids_in(root: Path) -> list[int]:
    """Every process in any cgroup below ``root`` (any hierarchy)."""
    found = cgroups.detect(root)
    pids: set[int] = set()
    for top in [p for p in [found.v2, *found.v1.values()] if p is not None and p.is_dir()]:
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs.read_text().split())
    return sorted(pids)
