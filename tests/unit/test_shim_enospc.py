"""The shim keeps a flow running through a full disk: output that cannot be written is
dropped and counted, and the exit status is recorded as soon as the disk takes it, so a
flow that completed is never reported Crashed for want of space. ENOSPC is injected into
the shim's writes (its log and status.json); the flow is a real child process."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from agent.worker import shim
from agent.worker.launcher import read_status

LINES, LINE = 2000, b"x" * 99 + b"\n"
FLOW = f"import sys\nfor _ in range({LINES}): sys.stdout.buffer.write({LINE!r})\n"


class FullDisk:
    """ENOSPC for writes to the run's output log and status while ``full``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.status_failures = 0
        self.status_writes: list[str] = []
        real_write, real_status = os.write, shim.write_status

        def write(fd: int, data: bytes) -> int:
            if self.full and os.readlink(f"/proc/self/fd/{fd}").endswith(shim.LOG_FILE):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def write_status(run_dir: Path, status: dict[str, object]) -> None:
            phase = str(status["phase"])
            if self.full:
                self.status_failures += 1
                if phase == "ended" and self.status_failures >= 4:
                    self.full = False  # space comes back while the shim keeps trying
                else:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_status(run_dir, status)
            self.status_writes.append(phase)
            if phase == "starting":
                self.full = True  # the disk fills as the flow starts

        monkeypatch.setattr(os, "write", write)  # the shim writes its log with os.write
        monkeypatch.setattr(shim, "write_status", write_status)


def test_a_flow_runs_to_its_end_through_a_full_disk_and_its_status_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FullDisk(monkeypatch)
    code = shim.run(tmp_path, [sys.executable, "-c", FLOW], 1 << 30, "", echo=False)
    assert code == 0
    status = json.loads((tmp_path / shim.STATUS_FILE).read_text())
    assert (status["phase"], status["returncode"]) == ("ended", 0)  # never cut short
    assert status["dropped_bytes"] == LINES * len(LINE)  # every line, counted
    assert status["dropped_writes"] == LINES
    # "running" failed (and was tried again while the flow ran), "ended" was retried.
    assert disk.status_writes == ["starting", "ended"]
    assert disk.status_failures >= 4
    # The worker's view: the flow's real exit status, not a Crashed "shim ended".
    assert read_status(tmp_path)["returncode"] == 0
    note = f"local-agent: {LINES * len(LINE)} bytes of output were dropped (disk full?)\n"
    assert (tmp_path / shim.LOG_FILE).read_bytes() == note.encode()


def test_output_is_kept_again_once_the_disk_has_room(tmp_path: Path) -> None:
    log = shim.BoundedLog(tmp_path / shim.LOG_FILE, 1 << 20)
    log.write(b"before\n")
    real_fd = log.fd
    log.fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    log.write(b"lost\n")
    os.close(log.fd)
    log.fd = real_fd
    log.write(b"after\n")
    log.close()
    assert (log.dropped_bytes, log.dropped_writes) == (5, 1)
    assert (tmp_path / shim.LOG_FILE).read_bytes() == (
        b"before\nafter\nlocal-agent: 5 bytes of output were dropped (disk full?)\n"
    )


def test_a_flow_is_not_started_when_its_start_cannot_be_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(run_dir: Path, status: dict[str, object]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shim, "write_status", full)
    monkeypatch.setattr(shim, "START_PATIENCE", 0.2)
    marker = tmp_path / "ran"
    flow = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    assert shim.run(tmp_path, flow, 1 << 20, "", echo=False) == shim.RET_NOT_STARTED
    assert not marker.exists()  # an adopter finding no status must never start it twice
