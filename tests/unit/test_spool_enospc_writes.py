"""A full disk under the spool, injected: the OS calls agent/spool/moves.py makes fail with
ENOSPC (after storing part of the data, as a filling disk does) while a spec is written
ahead, the spool is probed, a spec is published or a file is replaced durably. Whatever
fails, a spec is never half-written where anyone reads it, nothing is left behind for
ever, the error says in plain words what is wrong, and the spec stays where it is picked
up again once there is space: tmp/ (settled by the poller's reconcile) or new/."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import SpoolError
from agent.spool.files import replace_file_durably
from agent.spool.moves import NEW, STATE_DIRS, TMP, Spool
from tests.unit.spool_enospc_support import (
    NO_SPACE,
    SPEC,
    FillingDisk,
    enospc,
    entries,
    everything,
    fail_fsync_of,
)

# -- write_ahead -------------------------------------------------------------------------


def test_write_ahead_disk_full_mid_file_raises_and_leaves_no_partial_spec(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FillingDisk(room=4096)
    monkeypatch.setattr("agent.spool.files.os.write", disk)
    with pytest.raises(SpoolError) as info:
        spool.write_ahead("r1", SPEC)
    monkeypatch.undo()
    # It did fail part-way through the file, as a filling disk does.
    assert disk.partial == [4096]
    message = str(info.value)
    assert message.startswith("cannot write spec for flow run r1: ")
    assert NO_SPACE in message
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    # The partial file is gone: not in tmp/ (not even under a dot-name), nowhere else.
    assert everything(spool) == {state: [] for state in STATE_DIRS}


def test_write_ahead_after_the_disk_had_filled_writes_the_whole_spec(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=100))
    with pytest.raises(SpoolError):
        spool.write_ahead("r1", SPEC)
    monkeypatch.undo()
    spool.write_ahead("r1", SPEC)  # space is back
    assert spool.read(TMP, "r1") == SPEC
    assert entries(spool, TMP) == ["r1.json"]


def test_write_ahead_whose_folder_cannot_be_synced_leaves_nothing_to_claim_with(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spec is whole but not durably in tmp/: the claim is not made, so the spec is
    # of no use and is not left for a later reconcile to find.
    fail_fsync_of(monkeypatch, spool.dir(TMP))
    with pytest.raises(SpoolError, match=f"cannot write spec for flow run r1: .*{NO_SPACE}"):
        spool.write_ahead("r1", SPEC)
    assert everything(spool) == {state: [] for state in STATE_DIRS}


# -- probe -------------------------------------------------------------------------------


def test_probe_of_a_full_disk_says_so_and_leaves_no_probe_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert spool.probe() is None
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=0))
    error = spool.probe()
    monkeypatch.undo()
    # Health shows it as "spool <root>: cannot write: No space left on device".
    assert error == "cannot write: No space left on device"
    assert entries(spool, TMP) == []
    assert spool.probe() is None  # space is back


def test_probe_of_a_disk_with_no_inodes_left_says_so(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_inodes(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            raise enospc()  # what creat(2) says when the inode table is full
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr("agent.spool.files.os.open", no_inodes)
    assert spool.probe() == "cannot write: No space left on device"
    monkeypatch.undo()
    assert entries(spool, TMP) == []


# -- publish -----------------------------------------------------------------------------


def test_publish_refused_for_want_of_space_keeps_the_whole_spec_in_tmp(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.write_ahead("r1", SPEC)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        raise enospc()  # a directory that needs a new block to hold the name

    monkeypatch.setattr("agent.spool.moves.os.link", link)
    with pytest.raises(SpoolError) as info:
        spool.publish("r1")
    monkeypatch.undo()
    assert str(info.value) == f"cannot publish spec for flow run r1: [Errno 28] {NO_SPACE}"
    # Nothing visible in new/; the whole spec is still in tmp/, where the poller's
    # reconcile publishes it (the claim was made) once there is space.
    assert everything(spool) == {**{s: [] for s in STATE_DIRS}, TMP: ["r1.json"]}
    assert spool.read(TMP, "r1") == SPEC
    spool.publish("r1")
    assert everything(spool) == {**{s: [] for s in STATE_DIRS}, NEW: ["r1.json"]}
    assert spool.read(NEW, "r1") == SPEC


def test_publish_whose_new_folder_cannot_be_synced_leaves_no_second_copy_in_tmp(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spec is in new/ (linked): a copy left in tmp/ could be published a second time
    # by a later reconcile after a worker has taken the first one from new/.
    spool.write_ahead("r1", SPEC)
    fail_fsync_of(monkeypatch, spool.dir(NEW))
    spool.publish("r1")  # published: the failure is logged, not raised
    monkeypatch.undo()
    assert everything(spool) == {**{s: [] for s in STATE_DIRS}, NEW: ["r1.json"]}
    assert spool.read(NEW, "r1") == SPEC


# -- replace_file_durably (outcome notes, worker states, outbox reports) -----------------


def test_replace_file_durably_on_a_full_disk_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w1.json"
    replace_file_durably(path, b'{"state": "idle"}')
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=5))
    with pytest.raises(OSError) as info:
        replace_file_durably(path, b'{"state": "busy", "flow_run_id": "r1"}')
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["w1.json"]
    assert path.read_bytes() == b'{"state": "idle"}'


def test_replace_file_durably_whose_rename_fails_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w1.json"
    replace_file_durably(path, b"old")

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        raise enospc()

    monkeypatch.setattr("agent.spool.moves.os.replace", replace)
    with pytest.raises(OSError):
        replace_file_durably(path, b"new")
    monkeypatch.undo()
    # The temp name carries the pid: left behind, no later write of another process
    # would ever remove it.
    assert sorted(os.listdir(tmp_path)) == ["w1.json"]
    assert path.read_bytes() == b"old"
