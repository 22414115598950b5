"""A full disk under the spool, injected: the OS calls agent/spool/moves.py makes fail with
ENOSPC (after storing part of the data, as a filling disk does). Whatever fails, a spec
is never half-written where anyone reads it, nothing is left behind for ever, the error
says in plain words what is wrong, and the spec stays where it is picked up again once
there is space: tmp/ (settled by the poller's reconcile), new/ or cur/ (adopted).

The last tests run a real Poller on a real spool with a fake API: nothing is claimed
that cannot be written, and claiming resumes by itself once space returns."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.errors import SpoolError
from agent.core.jobvars import base_job_template
from agent.poller.loop import Poller
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool import files as spool_files
from agent.spool import moves as spool_module
from agent.spool.files import read_json_object, replace_file_durably
from agent.spool.moves import CUR, DONE, FAILED, NEW, STATE_DIRS, TMP, Lease, Spool
from tests.unit.test_health import FakeRegistry

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
REAL_WRITE = os.write
SPEC = b'{"run": "r1", "padding": "' + b"x" * 10_000 + b'"}'


def enospc() -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE)


class FillingDisk:
    """Stands in for os.write: stores the first ``room`` bytes for real, then fails with
    ENOSPC, as a disk that fills up mid-file does. ``partial`` records the size each
    file had when its write failed."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.partial: list[int] = []

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.room <= 0:
            self.partial.append(os.fstat(fd).st_size)
            raise enospc()
        written = REAL_WRITE(fd, bytes(data[: self.room]))
        self.room -= written
        return written


def entries(spool: Spool, state: str) -> list[str]:
    """Every name in a state folder, dot-files (temp names) included."""
    return sorted(os.listdir(spool.dir(state)))


def everything(spool: Spool) -> dict[str, list[str]]:
    return {state: entries(spool, state) for state in STATE_DIRS}


def taken(spool: Spool, leases: list[Lease], run_id: str = "r1") -> Lease:
    spool.write_ahead(run_id, SPEC)
    spool.publish(run_id)
    lease = spool.take()
    assert lease is not None
    leases.append(lease)
    return lease


def fail_fsync_of(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make fsync of ``folder`` (a directory) fail with ENOSPC; other fsyncs work."""
    real = spool_files.fsync_dir

    def fsync_dir(path: Path) -> None:
        if path == folder:
            raise enospc()
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)


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


# -- finish / refuse: a spec is never lost ----------------------------------------------


RETIRE: dict[str, tuple[Callable[[Spool, Lease], None], str, str]] = {
    "finish": (lambda s, lease: s.finish(lease, "completed"), DONE, "r1.outcome"),
    "refuse": (
        lambda s, lease: s.refuse(lease, "Unusable job spec: " + "x" * 5000),
        FAILED,
        "r1.reason",
    ),
}


@pytest.mark.parametrize("move", sorted(RETIRE))
def test_disk_full_while_writing_the_note_keeps_the_spec_in_cur_for_adoption(
    spool: Spool, leases: list[Lease], monkeypatch: pytest.MonkeyPatch, move: str
) -> None:
    retire, state, note = RETIRE[move]
    lease = taken(spool, leases)
    disk = FillingDisk(room=10)
    monkeypatch.setattr("agent.spool.files.os.write", disk)
    with pytest.raises(SpoolError) as info:
        retire(spool, lease)
    monkeypatch.undo()
    assert disk.partial == [10]  # the note was half-written when the disk filled
    assert str(info.value) == f"cannot move flow run r1 to {state}/: [Errno 28] {NO_SPACE}"
    # The spec is whole and still in cur/; no note, half-written or not, anywhere.
    assert everything(spool) == {**{s: [] for s in STATE_DIRS}, CUR: ["r1.json"]}
    assert spool.read(CUR, "r1") == SPEC
    # The lease is released: the next worker adopts the run (and does not start it again
    # if it ran: see agent/worker/adopt.py), then retires it once there is space.
    assert lease.fd == -1
    adopted = spool.adopt()
    assert adopted is not None
    leases.append(adopted)
    assert (adopted.run_id, adopted.data, adopted.adopted) == ("r1", SPEC, True)
    retire(spool, adopted)
    assert everything(spool) == {**{s: [] for s in STATE_DIRS}, state: ["r1.json", note]}


def test_disk_full_at_the_move_to_done_keeps_the_spec_in_cur(
    spool: Spool, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = taken(spool, leases)

    def rename(src: Any, dst: Any, **kwargs: Any) -> None:
        raise enospc()

    monkeypatch.setattr("agent.spool.moves.os.rename", rename)
    with pytest.raises(SpoolError, match=f"cannot move flow run r1 to done/: .*{NO_SPACE}"):
        spool.finish(lease, "completed")
    monkeypatch.undo()
    # The note is there (replaced when the run is retired again); the spec never left cur/.
    assert entries(spool, CUR) == ["r1.json"]
    assert entries(spool, DONE) == ["r1.outcome"]
    adopted = spool.adopt()
    assert adopted is not None
    leases.append(adopted)
    spool.finish(adopted, "crashed")
    assert entries(spool, CUR) == []
    assert entries(spool, DONE) == ["r1.json", "r1.outcome"]
    assert json.loads((spool.dir(DONE) / "r1.outcome").read_bytes())["outcome"] == "crashed"


def test_disk_full_when_cancelling_a_waiting_run_leaves_it_waiting(
    spool: Spool, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.write_ahead("r1", SPEC)
    spool.publish("r1")
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=0))
    with pytest.raises(SpoolError, match=f"cannot move flow run r1 to done/: .*{NO_SPACE}"):
        spool.cancel_waiting("r1", "Cancelled before it started")
    monkeypatch.undo()
    assert everything(spool) == {**{s: [] for s in STATE_DIRS}, NEW: ["r1.json"]}
    # Still takeable: the worker reads the run first and settles a Cancelling one.
    lease = spool.take()
    assert lease is not None
    leases.append(lease)
    assert lease.data == SPEC


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


# -- the poller: nothing is claimed that cannot be written -------------------------------

URL = "http://prefect.invalid/api"
POOL = "pool"


class FakeClient(PrefectClient):
    """One due run; remembers the Pending it was asked for and answers reads with it."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.run_id = str(uuid.uuid4())
        self.state: dict[str, Any] = {"type": "SCHEDULED", "name": "Scheduled"}
        self.claims: list[dict[str, Any]] = []

    def flow_run(self) -> dict[str, Any]:
        return {"id": self.run_id, "name": "tidy-otter", "state": self.state}

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_work_pool":
            return {"name": POOL, "type": "local-agent", "base_job_template": base_job_template()}
        if call == "get_scheduled_flow_runs":
            due = self.state["type"] == "SCHEDULED"
            return [{"flow_run": self.flow_run()}] if due else []
        if call == "set_flow_run_state":
            self.claims.append(json["state"])
            self.state = json["state"]
            return {"status": "ACCEPT", "state": json["state"]}
        if call == "read_flow_run":
            return self.flow_run()
        if call == "filter_flow_runs":
            return []
        return None


class World:
    def __init__(self, root: Path) -> None:
        self.client = FakeClient()
        self.spool = Spool(root / "spool")
        self.spool.ensure()
        config = PollerConfig(
            api=ApiSettings(url=URL), pool=POOL, spool_dir=self.spool.root, cloud_logs=False
        )
        self.poller = Poller(config, self.client, self.spool, FakeRegistry(idle=1))

    def spool_reason(self) -> str | None:
        _, checks = self.poller.health()
        reason: str | None = checks["spool"]["reason"]
        return reason


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_full_spool_claims_nothing_says_why_and_resumes_by_itself(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=0))
    for _ in range(3):
        world.poller.tick()
    assert world.client.claims == []  # the due run was seen, and not claimed
    assert world.spool_reason() == f"spool {world.spool.root}: cannot write: {NO_SPACE}"
    assert world.poller.health()[0] is False
    assert everything(world.spool) == {state: [] for state in STATE_DIRS}

    monkeypatch.undo()
    world.poller.tick()
    assert world.spool_reason() is None
    assert [c["type"] for c in world.client.claims] == ["PENDING"]
    assert world.spool.run_ids(NEW) == [world.client.run_id]
    assert entries(world.spool, TMP) == []


def test_a_sleeping_poller_probes_a_full_spool_each_second_and_wakes_when_it_has_room(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its idle sleep may be 30 s with the events stream up; claims resume within a second
    # or so of space returning all the same.
    disk = FillingDisk(room=0)
    monkeypatch.setattr("agent.spool.files.os.write", disk)
    world.poller.tick()
    probes = len(disk.partial)
    started = time.monotonic()
    world.poller._sleep(2.6)  # still full: no early wake, a probe each second
    assert time.monotonic() - started >= 2.6
    assert len(disk.partial) - probes >= 2
    assert world.spool_reason() == f"spool {world.spool.root}: cannot write: {NO_SPACE}"

    threading.Timer(0.3, lambda: setattr(disk, "room", 10**9)).start()
    started = time.monotonic()
    world.poller._sleep(30.0)
    assert time.monotonic() - started < 3.0
    assert world.spool_reason() is None  # health says so before the next round
    world.poller.tick()
    assert [c["type"] for c in world.client.claims] == ["PENDING"]


def test_a_spec_too_big_for_the_space_left_does_not_make_the_poller_wake_each_second(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe's byte fits, the spec does not: a wake each second would poll the API
    # each second for as long as the disk stays nearly full.
    disk = FillingDisk(room=1)
    monkeypatch.setattr("agent.spool.files.os.write", disk)
    world.poller.tick()
    assert world.client.claims == []
    writes = len(disk.partial)
    started = time.monotonic()
    world.poller._sleep(1.6)
    assert time.monotonic() - started >= 1.6
    assert len(disk.partial) == writes  # no probe while asleep


def test_a_spec_too_big_for_the_space_left_is_not_claimed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room for the probe's byte, not for the spec: the write-ahead fails, before the claim.
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=1))
    world.poller.tick()
    monkeypatch.undo()
    assert world.client.claims == []
    reason = world.spool_reason()
    assert reason is not None
    assert f"cannot write spec for flow run {world.client.run_id}: " in reason
    assert NO_SPACE in reason
    assert everything(world.spool) == {state: [] for state in STATE_DIRS}
    world.poller.tick()
    assert len(world.client.claims) == 1
    assert world.spool.run_ids(NEW) == [world.client.run_id]


def test_a_claim_whose_publish_failed_is_published_once_space_returns(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        raise enospc()

    # The disk fills between the claim and the publish.
    monkeypatch.setattr("agent.spool.moves.os.link", link)
    world.poller.tick()
    assert len(world.client.claims) == 1
    reason = world.spool_reason()
    assert reason is not None
    assert f"cannot publish spec for flow run {world.client.run_id}: " in reason
    assert NO_SPACE in reason
    # And stays full: reconcile finds the claim ours and cannot publish it either.
    monkeypatch.setattr("agent.spool.files.os.write", FillingDisk(room=0))
    world.poller.tick()
    assert len(world.client.claims) == 1
    assert world.spool.run_ids(TMP) == [world.client.run_id]
    assert read_json_object(world.spool.dir(TMP) / f"{world.client.run_id}.json")
    assert entries(world.spool, NEW) == []
    # The settle duty's failure is the round's spool error: it names the publish.
    assert world.spool_reason() == (
        f"spool {world.spool.root}: cannot publish spec for flow run "
        f"{world.client.run_id}: {enospc()}"
    )

    monkeypatch.undo()
    world.poller.tick()
    assert len(world.client.claims) == 1  # published, not claimed again
    assert world.spool.run_ids(NEW) == [world.client.run_id]
    assert entries(world.spool, TMP) == []
    assert world.spool_reason() is None


def test_a_published_spec_is_never_published_again_after_a_worker_took_it(
    world: World, monkeypatch: pytest.MonkeyPatch, leases: list[Lease]
) -> None:
    # Syncing new/ fails after the link: the spec is published all the same. A copy left
    # in tmp/ would be published again by the next reconcile (the run is still our
    # Pending until its engine starts) after a worker took the first: run twice.
    fail_fsync_of(monkeypatch, world.spool.dir(NEW))
    world.poller.tick()
    monkeypatch.undo()
    assert world.spool.run_ids(NEW) == [world.client.run_id]
    lease = world.spool.take()
    assert lease is not None
    leases.append(lease)
    world.poller.tick()
    assert world.client.state["type"] == "PENDING"
    assert everything(world.spool) == {
        **{s: [] for s in STATE_DIRS},
        CUR: [f"{world.client.run_id}.json"],
    }
