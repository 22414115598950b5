"""agent/spool/moves.py's take: the oldest waiting spec moved to cur/ under an flock,
never handed out twice, and specs locked, raced or gone on the way skipped."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from agent.spool.moves import CUR, NEW, Lease, Spool
from tests.unit.spool_support import deliver, files, take

StrPath = str | os.PathLike[str]


def is_flocked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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
