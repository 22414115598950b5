"""A full disk under the spool, injected, while a run is retired: finish (to done/),
refuse (to failed/) and cancelling a waiting run. The spec is never lost: it stays whole
in cur/ (adopted by the next worker, which retires it once there is space) or in new/."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agent.core.errors import SpoolError
from agent.spool.moves import CUR, DONE, FAILED, NEW, STATE_DIRS, Lease, Spool
from tests.unit.spool_enospc_support import NO_SPACE, SPEC, FillingDisk, enospc, entries, everything


def taken(spool: Spool, leases: list[Lease], run_id: str = "r1") -> Lease:
    spool.write_ahead(run_id, SPEC)
    spool.publish(run_id)
    lease = spool.take()
    assert lease is not None
    leases.append(lease)
    return lease


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
