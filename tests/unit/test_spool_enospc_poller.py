"""A full disk under the spool, injected, with a real Poller on a real spool and a fake
API: nothing is claimed that cannot be written, the health check says why, and claiming
resumes by itself once space returns; a claim whose publish failed is published then,
once and only once."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.jobvars import base_job_template
from agent.poller.loop import Poller
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.files import read_json_object
from agent.spool.moves import CUR, NEW, STATE_DIRS, TMP, Lease, Spool
from tests.unit.spool_enospc_support import (
    NO_SPACE,
    FillingDisk,
    enospc,
    entries,
    everything,
    fail_fsync_of,
)
from tests.unit.test_health import FakeRegistry

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
