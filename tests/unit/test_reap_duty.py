"""agent/poller/reaper.py: the duty that gathers the facts (the pool's workers and its
live runs) and proposes Crashed for the runs of agents silent longer than --reap-after
(the rules, agent/core/reap.py, are test_reap_rules.py's).

The duty gets a real Reporter, a real Outbox and Spool in tmp_path, and a fake API client
whose transport is a script."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox
from agent.api.reporter import Reporter
from agent.core import reap
from agent.core.reap import Lost
from agent.poller.outage import Outage
from agent.poller.reaper import Reaper
from agent.poller.shared import Shared
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import Spool
from agent.spool.registry import Registry
from tests.unit.reap_support import ME, OLD, REAP_AFTER, SILENT, THEM, labels
from tests.unit.reporter_support import RecordedRunLogs

# -- the reap duty --------------------------------------------------------------------------

URL = "http://prefect.invalid/api"
POOL = "pool"
LOST_RUN = "3f1c0f9e-0000-4000-8000-0000000000a1"


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat()


def worker(name: str, silent: float) -> dict[str, Any]:
    """A worker as POST /work_pools/{pool}/workers/filter returns it."""
    return {
        "name": name,
        "last_heartbeat_time": iso(silent),
        "heartbeat_interval_seconds": 30,
        "status": "ONLINE" if silent < 90 else "OFFLINE",
    }


def flow_run(run_id: str, agent: str, host: str, kind: str = "RUNNING") -> dict[str, Any]:
    """A flow run as POST /flow_runs/filter returns it, its state an hour old."""
    return {
        "id": run_id,
        "name": "sleepy-otter",
        "work_pool_name": POOL,
        "labels": labels(agent, host),
        "state_type": kind,
        "state": {
            "id": f"state-of-{run_id}",
            "type": kind,
            "name": kind.title(),
            "timestamp": iso(OLD),
            "state_details": {"flow_run_id": run_id, "transition_id": "the-engines"},
        },
    }


class FakeClient(PrefectClient):
    """The server: ``workers`` and ``live`` are what the pool's workers and its runs
    look like; ``answer`` is what set_flow_run_state answers. Records every call."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.workers: list[dict[str, Any]] = []
        self.live: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {"status": "ACCEPT"}
        self.calls: list[tuple[str, str, Any]] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, path, json))
        if call == "read_workers":
            return self.workers
        if call == "filter_flow_runs":
            return self.live[json["offset"] : json["offset"] + json["limit"]]
        if call == "set_flow_run_state":
            if self.answer["status"] == "ACCEPT":
                return {**self.answer, "state": json["state"]}
            return {"state": {"type": "CRASHED", "name": "Crashed"}, **self.answer}
        raise AssertionError(f"the reap duty does not call {call}")

    def named(self, call: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == call]


class World:
    def __init__(
        self, spool: Spool, reap_after: float = REAP_AFTER, cloud_logs: bool = True
    ) -> None:
        self.client = FakeClient()
        self.runlogs = RecordedRunLogs()
        self.outbox = Outbox(spool.root)
        config = PollerConfig(
            api=ApiSettings(url=URL),
            pool=POOL,
            spool_dir=spool.root,
            name=ME[0],
            hostname=ME[1],
            cloud_logs=cloud_logs,
            reap_after=reap_after,
        )
        reporter = Reporter(self.client, self.outbox, self.runlogs, source="poller")
        shared = Shared(
            config, config, self.client, spool, Registry(spool.root), reporter, Outage(self.client)
        )
        self.reaper = Reaper(shared)

    def host_lost(self) -> None:
        """THEM silent for an hour with a run Running; another agent and this one alive,
        each with a run of its own."""
        self.client.workers = [worker(THEM[0], SILENT), worker("host-c", 5), worker(ME[0], 2)]
        self.client.live = [
            flow_run("3f1c0f9e-0000-4000-8000-0000000000c1", "host-c", "h3"),
            flow_run(LOST_RUN, *THEM),
            flow_run("3f1c0f9e-0000-4000-8000-0000000000b1", *ME),
        ]

    def call_names(self) -> list[str]:
        return [c[0] for c in self.client.calls]


def reaped_total() -> float:
    return REGISTRY.get_sample_value("agent_flow_runs_reaped_total") or 0.0


@pytest.fixture
def world(spool: Spool) -> World:
    return World(spool)


def test_with_reaping_off_the_duty_makes_no_api_call(spool: Spool) -> None:
    world = World(spool, reap_after=0)
    world.host_lost()
    world.reaper.run()
    assert world.client.calls == []


def test_with_no_silent_agent_the_duty_reads_the_workers_only(world: World) -> None:
    world.client.workers = [worker(THEM[0], 20), worker(ME[0], 2)]
    world.client.live = [flow_run(LOST_RUN, *THEM)]
    world.reaper.run()  # the first look reads the runs too (see the next test)
    world.client.calls.clear()
    world.reaper.run()
    assert world.call_names() == ["read_workers"]
    [(_, path, _)] = world.client.calls
    assert path == f"/work_pools/{POOL}/workers/filter"
    assert world.client.named("set_flow_run_state") == []


def test_runs_of_an_agent_without_a_heartbeat_record_are_found_by_the_periodic_look(
    world: World,
) -> None:
    """No record points to such an agent, so no silence shows in the workers: the runs
    are read anyway at the start and every few minutes."""
    world.client.workers = [worker(ME[0], 2)]
    world.client.live = [flow_run(LOST_RUN, *THEM)]
    world.reaper.run()
    assert world.call_names() == ["read_workers", "filter_flow_runs", "set_flow_run_state"]


def test_a_silent_agent_of_this_agents_own_name_makes_the_duty_read_nothing_more(
    world: World,
) -> None:
    world.client.workers = [worker(ME[0], SILENT)]
    world.reaper.run()
    world.client.calls.clear()
    world.reaper.run()
    assert world.call_names() == ["read_workers"]


def test_a_lost_host_has_its_run_and_only_its_run_proposed_crashed(world: World) -> None:
    world.host_lost()
    before = reaped_total()
    world.reaper.run()

    assert world.call_names() == ["read_workers", "filter_flow_runs", "set_flow_run_state"]
    [(_, _, look)] = world.client.named("filter_flow_runs")
    assert look["work_pools"] == {"name": {"any_": [POOL]}}
    assert sorted(look["flow_runs"]["state"]["type"]["any_"]) == ["PENDING", "RUNNING"]

    [(_, path, body)] = world.client.named("set_flow_run_state")
    assert path == f"/flow_runs/{LOST_RUN}/set_state"
    assert body["force"] is False
    state = body["state"]
    assert (state["type"], state["name"]) == ("CRASHED", "Crashed")
    assert f"agent {THEM[0]!r} on {THEM[1]}" in state["message"]
    assert f"marked Crashed by agent {ME[0]!r} on {ME[1]}" in state["message"]
    expected = reap.proposal(Lost(LOST_RUN, f"state-of-{LOST_RUN}", *THEM, SILENT), ME, REAP_AFTER)
    assert state["state_details"] == {"transition_id": expected.transition_id}

    assert reaped_total() - before == 1
    assert world.runlogs.lines == [(LOST_RUN, state["message"], logging.WARNING)]
    assert world.outbox.count() == 0


def test_a_run_another_reaper_got_first_is_neither_counted_nor_logged(world: World) -> None:
    """The second of two reapers proposes the same transition: the server rejects it as
    a duplicate, and the run's log gets the line of the reaper that won only."""
    world.host_lost()
    world.client.answer = {
        "status": "REJECT",
        "details": {"reason": "This run has already made this state transition."},
    }
    before = reaped_total()
    world.reaper.run()
    assert len(world.client.named("set_flow_run_state")) == 1
    assert reaped_total() == before
    assert world.runlogs.lines == []
    assert world.outbox.count() == 0


def test_a_reap_the_server_asks_to_wait_for_is_dropped_not_kept_in_the_outbox(
    world: World,
) -> None:
    """Delivered later, a kept Crashed could hit a run that is another claim's by then:
    the next look decides again instead."""
    world.host_lost()
    world.client.answer = {"status": "WAIT", "details": {"delay_seconds": 5}}
    before = reaped_total()
    world.reaper.run()
    assert world.outbox.count() == 0
    assert reaped_total() == before


def test_without_cloud_logs_a_reaped_run_is_counted_but_not_logged(spool: Spool) -> None:
    world = World(spool, cloud_logs=False)
    world.host_lost()
    before = reaped_total()
    world.reaper.run()
    assert reaped_total() - before == 1
    assert world.runlogs.lines == []


def test_a_silent_agent_without_live_runs_costs_one_look_and_no_proposal(world: World) -> None:
    world.client.workers = [worker(THEM[0], SILENT)]
    world.client.live = [flow_run(LOST_RUN, *THEM, kind="COMPLETED")]  # a server ignoring it
    world.reaper.run()
    assert world.call_names() == ["read_workers", "filter_flow_runs"]


@pytest.mark.parametrize(
    ("reap_after", "every"),
    [(6.0, 10.0), (30.0, 10.0), (300.0, 30.0), (600.0, 60.0), (86400.0, 60.0)],
)
def test_the_reap_duty_looks_every_tenth_of_reap_after_between_10_s_and_a_minute(
    reap_after: float, every: float
) -> None:
    # By default (10 minutes) one request a minute while idle; a lost host's runs are
    # Crashed within reap_after plus one look.
    assert reap.check_every(reap_after) == every


def test_another_host_under_this_agents_name_is_logged_once_as_an_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.client.workers = [worker(ME[0], 2)]
    world.client.live = [flow_run(LOST_RUN, ME[0], "h9")]
    with caplog.at_level(logging.ERROR):
        world.reaper.run()
        world.reaper._full_look_at = 0.0  # the next periodic look, at once
        world.reaper.run()
    assert world.call_names().count("filter_flow_runs") == 2
    assert caplog.messages == [
        f"agent name {ME[0]!r} is in use on host h9 too (flow run {LOST_RUN} is labelled "
        "for it): the pool keeps one heartbeat per name, so the loss of either host goes "
        "unnoticed; give each host its own --name (AGENT_NAME)"
    ]
    assert world.client.named("set_flow_run_state") == []  # never reaped by its twin
