"""agent/spool/moves.py (the spool's moves): ensure, write_ahead / publish / discard,
finish / refuse and depth, and moves cut short by a crash that left a spec linked in two
folders."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from agent.core.errors import SpoolError
from agent.spool.moves import CUR, DONE, FAILED, NEW, RUNS, STATE_DIRS, TMP, Lease, Spool
from tests.unit.spool_support import deliver, files, take

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


# -- a move cut short: one spec linked in two folders ----------------------------------


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
