"""agent/spool/registry.py (live workers) and agent/spool/locks.py's lock_poller (one
poller per spool)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.errors import SpoolError
from agent.spool.locks import lock_poller
from agent.spool.moves import Spool
from agent.spool.registry import BACKOFF, BUSY, DEAD, IDLE, Registry

# -- lock_poller -----------------------------------------------------------------------


def test_lock_poller_twice_on_one_spool_is_refused(spool: Spool) -> None:
    fd = lock_poller(spool.root)
    try:
        with pytest.raises(SpoolError, match="another poller"):
            lock_poller(spool.root)
    finally:
        os.close(fd)


def test_lock_poller_is_free_again_after_the_holder_closes(spool: Spool) -> None:
    os.close(lock_poller(spool.root))
    os.close(lock_poller(spool.root))


# -- registry --------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path)
    yield reg
    reg.unregister()


def test_registered_worker_counts_as_idle(registry: Registry) -> None:
    registry.register("w1")
    assert registry.counts() == {IDLE: 1, BUSY: 0, BACKOFF: 0, DEAD: 0}


def test_busy_worker_counts_as_busy_with_its_run(registry: Registry) -> None:
    registry.register("w1")
    registry.set_state(BUSY, "run-1")
    assert registry.counts() == {IDLE: 0, BUSY: 1, BACKOFF: 0, DEAD: 0}
    [info] = registry.workers()
    assert info.worker_id == "w1"
    assert info.flow_run_id == "run-1"
    assert info.pid == os.getpid()


def test_idle_again_after_busy(registry: Registry) -> None:
    registry.register("w1")
    registry.set_state(BUSY, "run-1")
    registry.set_state(IDLE)
    assert registry.counts()[IDLE] == 1


def test_registering_the_same_id_twice_is_refused(tmp_path: Path, registry: Registry) -> None:
    registry.register("w1")
    other = Registry(tmp_path)
    with pytest.raises(SpoolError, match="w1"):
        other.register("w1")
    assert registry.counts() == {IDLE: 1, BUSY: 0, BACKOFF: 0, DEAD: 0}


def test_worker_without_state_file_counts_as_busy(tmp_path: Path, registry: Registry) -> None:
    registry.register("w1")
    (tmp_path / "workers" / "w1.json").unlink()
    assert registry.counts() == {IDLE: 0, BUSY: 1, BACKOFF: 0, DEAD: 0}


_CHILD = """
import sys, time
from pathlib import Path
from agent.spool.registry import Registry
Registry(Path(sys.argv[1])).register("child")
print("ready", flush=True)
time.sleep(60)
"""


def test_worker_killed_with_sigkill_counts_as_dead(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        registry = Registry(tmp_path)
        assert registry.counts() == {IDLE: 1, BUSY: 0, BACKOFF: 0, DEAD: 0}
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert registry.counts() == {IDLE: 0, BUSY: 0, BACKOFF: 0, DEAD: 1}
        [info] = registry.workers()
        assert info.worker_id == "child"
        assert info.state == DEAD
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_dead_worker_id_can_be_registered_again(tmp_path: Path, registry: Registry) -> None:
    first = Registry(tmp_path)
    first.register("w1")
    first.unregister()
    registry.register("w1")
    assert registry.counts() == {IDLE: 1, BUSY: 0, BACKOFF: 0, DEAD: 0}


def test_register_succeeds_while_a_liveness_probe_briefly_holds_the_lock(
    tmp_path: Path, registry: Registry
) -> None:
    (tmp_path / "workers").mkdir()
    probe = os.open(tmp_path / "workers" / "w1.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the poller's probe, mid-check
    timer = threading.Timer(0.05, os.close, args=(probe,))
    timer.start()
    try:
        registry.register("w1")
    finally:
        timer.join()
    assert registry.counts()[IDLE] == 1
