"""Orphans step aside (issue 11, item 9): a supervised process notices that its
supervisord died; a new one waits for an orphan still holding its lock, and says so."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import supervised
from agent.cli.status import collect
from agent.cli.status_table import render_table
from agent.spool.locks import POLLER_LOCK, POLLER_STATE, POLLER_WAITING, is_locked
from agent.spool.moves import Spool

SUPERVISED = {"SUPERVISOR_ENABLED": "1", "SUPERVISOR_SERVER_URL": "unix:///run/a/supervisor.sock"}


def test_a_supervised_process_notices_its_supervisord_died() -> None:
    watch = supervised.ParentWatch(4100, None, getppid=lambda: 1)
    assert watch.orphaned() == "supervisord (pid 4100) is gone: this process's parent is now 1"


def test_a_supervised_process_notices_its_supervisors_socket_is_gone() -> None:
    sock = Path("/run/a/supervisor.sock")
    watch = supervised.ParentWatch(4100, sock, getppid=lambda: 4100, exists=lambda p: False)
    assert watch.orphaned() == "supervisord's socket /run/a/supervisor.sock is gone"


def test_nothing_is_said_while_supervisord_is_there() -> None:
    sock = Path("/run/a/supervisor.sock")
    watch = supervised.ParentWatch(4100, sock, getppid=lambda: 4100, exists=lambda p: True)
    assert watch.orphaned() is None


def test_the_watch_calls_back_once_when_the_parent_changes() -> None:
    parent = [4100]
    called: list[str] = []
    done = threading.Event()

    def on_orphan(reason: str) -> None:
        called.append(reason)
        done.set()

    supervised.ParentWatch(4100, None, getppid=lambda: parent[0]).start(on_orphan, every=0.01)
    time.sleep(0.1)
    assert called == []
    parent[0] = 1
    assert done.wait(5)
    time.sleep(0.1)
    assert called == ["supervisord (pid 4100) is gone: this process's parent is now 1"]


def test_the_socket_comes_from_supervisors_server_url() -> None:
    assert supervised.socket_path(SUPERVISED) == Path("/run/a/supervisor.sock")
    assert supervised.socket_path({"SUPERVISOR_SERVER_URL": "http://127.0.0.1:9001"}) is None
    assert supervised.socket_path({}) is None


def test_parent_of_reads_proc() -> None:
    assert supervised.parent_of(os.getpid()) == os.getppid()
    assert supervised.parent_of(2**22 + 12345) is None


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process (our child, so no child of our supervisord) holding the poller lock for
    1.5 s, its pid in poller.json as a poller's would be."""
    root = tmp_path / "spool"
    Spool(root).ensure()
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(1.5)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root / POLLER_LOCK)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    (root / POLLER_STATE).write_text(json.dumps({"pid": proc.pid}))
    yield proc
    proc.kill()
    proc.wait()


def test_a_new_poller_waits_for_an_orphan_holding_the_lock_and_says_so(
    tmp_path: Path, holder: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool"
    seen: list[dict[str, object]] = []

    def look() -> None:  # what `agent status` shows while the new poller waits
        time.sleep(0.5)
        seen.append(collect(root)["poller"])

    looker = threading.Thread(target=look)
    looker.start()
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        supervised.wait_while_orphan_holds(
            root / POLLER_LOCK,
            root / POLLER_STATE,
            "the poller lock",
            SUPERVISED,
            root / POLLER_WAITING,
            poll=0.05,
        )
    looker.join()
    assert time.monotonic() - started >= 0.9  # it waited for the holder to exit
    assert holder.wait(5) == 0 and not is_locked(root / POLLER_LOCK)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"the poller lock is held by pid {holder.pid}, left running by a supervisord that "
        "died; waiting for it to finish and exit",
        "the poller lock is free now: starting",
    ]
    waiting = seen[0]["waiting"]
    assert isinstance(waiting, dict)
    assert (waiting["pid"], waiting["waiting_for"]) == (os.getpid(), holder.pid)
    assert not (root / POLLER_WAITING).exists()  # gone once the lock is free
    assert collect(root)["poller"]["waiting"] is None


def test_status_shows_the_waiting_poller_in_its_table(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    Spool(root).ensure()
    note = {"pid": os.getpid(), "waiting_for": 4242, "since": time.time()}
    (root / POLLER_WAITING).write_text(json.dumps(note))
    table = render_table(collect(root))
    assert (
        f"a new poller (pid {os.getpid()}) waits for pid 4242, left running by a supervisord "
        "that died, to exit" in table
    )


def test_by_hand_a_held_lock_is_not_waited_for(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    root = tmp_path / "spool"
    started = time.monotonic()
    supervised.wait_while_orphan_holds(
        root / POLLER_LOCK, root / POLLER_STATE, "the poller lock", {}, poll=0.05
    )
    assert time.monotonic() - started < 0.5 and holder.poll() is None  # lock_poller fails next


def test_a_holder_started_by_our_own_supervisord_is_not_waited_for(
    tmp_path: Path, holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "spool"
    monkeypatch.setattr(os, "getppid", os.getpid)  # the holder is our "supervisord's" child
    started = time.monotonic()
    supervised.wait_while_orphan_holds(
        root / POLLER_LOCK, root / POLLER_STATE, "the poller lock", SUPERVISED, poll=0.05
    )
    assert time.monotonic() - started < 0.5 and holder.poll() is None
