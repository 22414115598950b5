"""agent/spool/moves.py (the spool's moves) and agent/spool/registry.py (live workers)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.errors import SpoolError
from agent.spool.locks import lock_poller
from agent.spool.moves import CUR, DONE, FAILED, NEW, RUNS, STATE_DIRS, TMP, Lease, Spool
from agent.spool.registry import BACKOFF, BUSY, DEAD, IDLE, Registry

StrPath = str | os.PathLike[str]


def files(spool: Spool, state: str) -> list[str]:
    return sorted(p.name for p in spool.dir(state).iterdir())


def deliver(spool: Spool, run_id: str, mtime: float | None = None) -> None:
    """Write ahead and publish a spec, optionally dating it."""
    spool.write_ahead(run_id, f'{{"run": "{run_id}"}}'.encode())
    spool.publish(run_id)
    if mtime is not None:
        path = spool.dir(NEW) / f"{run_id}.json"
        os.utime(path, (mtime, mtime))


def take(spool: Spool, leases: list[Lease]) -> Lease | None:
    lease = spool.take()
    if lease is not None:
        leases.append(lease)
    return lease


def is_flocked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# -- ensure ----------------------------------------------------------------------------


def test_ensure_creates_every_folder_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "a" / "spool"
    Spool(root).ensure()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for name in (*STATE_DIRS, RUNS):
        path = root / name
        assert path.is_dir(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, name


def test_ensure_tightens_an_existing_root(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Spool(root).ensure()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_ensure_twice_is_harmless(spool: Spool) -> None:
    deliver(spool, "r1")
    spool.ensure()
    assert files(spool, NEW) == ["r1.json"]


# -- write_ahead / publish / discard ---------------------------------------------------


def test_write_ahead_writes_owner_only_file_in_tmp_only(spool: Spool) -> None:
    spool.write_ahead("r1", b'{"x": 1}')
    path = spool.dir(TMP) / "r1.json"
    assert path.read_bytes() == b'{"x": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for state in (NEW, CUR, DONE, FAILED):
        assert files(spool, state) == [], state


def test_write_ahead_replaces_a_leftover_for_the_same_run(spool: Spool) -> None:
    spool.write_ahead("r1", b"old")
    spool.write_ahead("r1", b"new")
    assert spool.read(TMP, "r1") == b"new"


def test_publish_moves_from_tmp_to_new(spool: Spool) -> None:
    spool.write_ahead("r1", b"data")
    spool.publish("r1")
    assert files(spool, TMP) == []
    assert files(spool, NEW) == ["r1.json"]
    assert spool.read(NEW, "r1") == b"data"
    assert spool.contains("r1") == NEW


def test_publish_of_a_run_already_waiting_keeps_one_copy(spool: Spool) -> None:
    spool.write_ahead("r1", b"first")
    spool.publish("r1")
    spool.write_ahead("r1", b"second")
    spool.publish("r1")
    assert files(spool, TMP) == []
    assert files(spool, NEW) == ["r1.json"]


def test_publish_without_write_ahead_is_a_spool_error(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="r1"):
        spool.publish("r1")


def test_discard_drops_the_write_ahead_spec(spool: Spool) -> None:
    spool.write_ahead("r1", b"data")
    spool.discard("r1")
    assert files(spool, TMP) == []
    assert spool.contains("r1") is None


def test_discard_of_unknown_run_is_harmless(spool: Spool) -> None:
    spool.discard("nope")
    assert files(spool, TMP) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_write_ahead_in_read_only_tmp_is_a_spool_error_leaving_nothing(spool: Spool) -> None:
    os.chmod(spool.dir(TMP), 0o500)
    try:
        with pytest.raises(SpoolError, match="r1"):
            spool.write_ahead("r1", b"data")
    finally:
        os.chmod(spool.dir(TMP), 0o700)
    assert files(spool, TMP) == []
    assert files(spool, NEW) == []


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_write_ahead_on_full_disk_is_a_spool_error_leaving_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(f"agent.spool.moves.os.{failing}", disk_full)
    with pytest.raises(SpoolError, match="r1") as info:
        spool.write_ahead("r1", b"data" * 1000)
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert files(spool, TMP) == []
    assert files(spool, NEW) == []


# -- take ------------------------------------------------------------------------------


def test_take_on_empty_spool_is_none(spool: Spool) -> None:
    assert spool.take() is None


def test_take_returns_the_oldest_and_moves_it_to_cur(spool: Spool, leases: list[Lease]) -> None:
    deliver(spool, "newer", mtime=2000)
    deliver(spool, "older", mtime=1000)
    lease = take(spool, leases)
    assert lease is not None
    assert lease.run_id == "older"
    assert lease.path == spool.dir(CUR) / "older.json"
    assert lease.data == b'{"run": "older"}'
    assert files(spool, CUR) == ["older.json"]
    assert files(spool, NEW) == ["newer.json"]


def test_take_holds_an_flock_until_released(spool: Spool) -> None:
    deliver(spool, "r1")
    lease = spool.take()
    assert lease is not None
    try:
        fd = os.open(lease.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lease.release()
    assert lease.fd == -1
    assert not is_flocked(spool.dir(CUR) / "r1.json")


def test_two_takes_never_return_the_same_run(spool: Spool, leases: list[Lease]) -> None:
    deliver(spool, "a", mtime=1000)
    deliver(spool, "b", mtime=2000)
    other = Spool(spool.root)
    first, second = take(spool, leases), take(other, leases)
    assert first is not None and second is not None
    assert {first.run_id, second.run_id} == {"a", "b"}
    assert take(spool, leases) is None
    assert take(other, leases) is None


def test_take_skips_a_spec_flocked_by_someone_else(spool: Spool, leases: list[Lease]) -> None:
    deliver(spool, "locked", mtime=1000)
    deliver(spool, "free", mtime=2000)
    fd = os.open(spool.dir(NEW) / "locked.json", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lease = take(spool, leases)
        assert lease is not None
        assert lease.run_id == "free"
        assert take(spool, leases) is None
        assert files(spool, NEW) == ["locked.json"]
    finally:
        os.close(fd)


def test_take_skips_a_spec_renamed_away_between_listing_and_rename(
    spool: Spool, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(spool, "raced", mtime=1000)
    deliver(spool, "next", mtime=2000)
    real_rename = os.rename
    raced: list[str] = []

    def rename_after_another_worker(src: StrPath, dst: StrPath) -> None:
        if not raced:  # another worker wins the first spec just before our rename
            raced.append(str(src))
            real_rename(src, spool.dir(CUR) / "raced.json")
        real_rename(src, dst)

    monkeypatch.setattr("agent.spool.moves.os.rename", rename_after_another_worker)
    lease = take(spool, leases)
    assert raced == [str(spool.dir(NEW) / "raced.json")]
    assert lease is not None
    assert lease.run_id == "next"


def test_take_returns_none_when_the_only_spec_vanishes_before_rename(
    spool: Spool, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(spool, "raced")
    real_rename = os.rename

    def rename_after_removal(src: StrPath, dst: StrPath) -> None:
        os.unlink(src)
        real_rename(src, dst)

    monkeypatch.setattr("agent.spool.moves.os.rename", rename_after_removal)
    assert take(spool, leases) is None


def test_take_skips_a_spec_that_vanishes_before_open(
    spool: Spool, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(spool, "gone", mtime=1000)
    deliver(spool, "next", mtime=2000)
    real_run_ids = spool.run_ids

    def listing_then_removal(state: str) -> list[str]:
        ids = real_run_ids(state)
        (spool.dir(NEW) / "gone.json").unlink(missing_ok=True)
        return ids

    monkeypatch.setattr(spool, "run_ids", listing_then_removal)
    lease = take(spool, leases)
    assert lease is not None
    assert lease.run_id == "next"


# -- finish / refuse -------------------------------------------------------------------


def test_finish_moves_to_done_with_outcome(spool: Spool) -> None:
    deliver(spool, "r1")
    lease = spool.take()
    assert lease is not None
    spool.finish(lease, "completed")
    assert files(spool, CUR) == []
    assert (spool.dir(DONE) / "r1.json").read_bytes() == b'{"run": "r1"}'
    outcome = json.loads((spool.dir(DONE) / "r1.outcome").read_bytes())
    assert outcome["outcome"] == "completed"
    assert isinstance(outcome["at"], float)
    assert lease.fd == -1
    assert spool.contains("r1") == DONE


def test_refuse_moves_to_failed_with_reason(spool: Spool) -> None:
    deliver(spool, "r1")
    lease = spool.take()
    assert lease is not None
    spool.refuse(lease, "Unusable job spec: spec file is empty")
    assert files(spool, CUR) == []
    assert (spool.dir(FAILED) / "r1.json").exists()
    reason = (spool.dir(FAILED) / "r1.reason").read_text()
    assert reason == "Unusable job spec: spec file is empty"
    assert lease.fd == -1
    assert spool.contains("r1") == FAILED


def test_finish_leaves_no_temp_files_beside_the_outcome(spool: Spool) -> None:
    deliver(spool, "r1")
    lease = spool.take()
    assert lease is not None
    spool.finish(lease, "failed")
    assert files(spool, DONE) == ["r1.json", "r1.outcome"]


def test_depth_counts_waiting_and_running(spool: Spool, leases: list[Lease]) -> None:
    deliver(spool, "a", mtime=1000)
    deliver(spool, "b", mtime=2000)
    deliver(spool, "c", mtime=3000)
    take(spool, leases)
    assert spool.depth() == {"waiting": 2, "running": 1}


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


def test_a_publish_cut_short_after_its_link_is_never_published_twice(spool: Spool) -> None:
    # The poller died between link(tmp/X, new/X) and unlink(tmp/X); a worker took the
    # spec since. The next poller's reconcile publishes tmp/X again: it must only drop
    # the copy, else new/X and cur/X would be one file and the run handed out twice.
    spool.write_ahead("r1", b'{"spec": 1}')
    os.link(spool.dir(TMP) / "r1.json", spool.dir(NEW) / "r1.json")
    lease = spool.take()
    assert lease is not None
    spool.publish("r1")
    assert files(spool, TMP) == []
    assert files(spool, NEW) == []
    assert files(spool, CUR) == ["r1.json"]
    assert spool.take() is None
    spool.finish(lease, "completed")
    assert files(spool, CUR) == []
    assert files(spool, DONE) == ["r1.json", "r1.outcome"]


def test_retiring_a_spec_already_linked_in_done_leaves_one(spool: Spool) -> None:
    # rename() between two links of one file is a no-op that succeeds: the spec must
    # still leave cur/, or every worker would adopt it again for ever.
    spool.write_ahead("r1", b'{"spec": 1}')
    spool.publish("r1")
    lease = spool.take()
    assert lease is not None
    os.link(spool.dir(CUR) / "r1.json", spool.dir(DONE) / "r1.json")
    spool.finish(lease, "completed")
    assert files(spool, CUR) == []
    assert files(spool, DONE) == ["r1.json", "r1.outcome"]
