"""agent/core/reap.py: which runs another agent of the pool holds although that agent's
heartbeat has been silent longer than --reap-after (host loss), and the Crashed proposed
for them; and agent/poller/reaper.py, the duty that gathers the facts and proposes.

The rules get plain data in and give a decision out. The duty gets a real Reporter, a
real Outbox and Spool in tmp_path, and a fake API client whose transport is a script."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox
from agent.api.reporter import Reporter
from agent.core import reap
from agent.core.claim import HOST_LABEL, WORKER_LABEL
from agent.core.reap import Beat, Lost
from agent.core.states import FlowRun, RunState, StateType
from agent.poller.outage import Outage
from agent.poller.reaper import Reaper
from agent.poller.shared import Shared
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import Spool
from agent.spool.registry import Registry
from tests.unit.strategies import FAST

NOW = 1_800_000_000.0
REAP_AFTER = 600.0
ME = ("host-b", "h2")  # this agent: its name and its host
THEM = ("host-a", "h1")  # the agent whose host is lost
SILENT = 3600.0  # well past REAP_AFTER
OLD = 3600.0  # a run's state this many seconds old


def beat(name: str, silent: float | None, interval: float | None = None) -> Beat:
    """An agent's worker record whose last heartbeat was ``silent`` seconds before NOW."""
    return Beat(name, None if silent is None else NOW - silent, interval)


def labels(agent: str | None = THEM[0], host: str | None = THEM[1]) -> dict[str, str]:
    found = {"prefect.flow.id": "f1"}
    if agent is not None:
        found[WORKER_LABEL] = agent
    if host is not None:
        found[HOST_LABEL] = host
    return found


def run(
    kind: StateType | None = StateType.RUNNING,
    age: float | None = OLD,
    agent: str | None = THEM[0],
    host: str | None = THEM[1],
    run_id: str = "r1",
    state_id: str | None = "s1",
) -> FlowRun:
    """A run labelled by the claim of ``agent`` on ``host``, its state ``age`` old."""
    state = RunState(
        kind,
        kind.title() if kind else "Mystery",
        timestamp=None if age is None else NOW - age,
        id=state_id,
    )
    return FlowRun(run_id, "sleepy-otter", state, 1, labels=labels(agent, host))


def lost(
    runs: list[FlowRun],
    beats: list[Beat],
    reap_after: float = REAP_AFTER,
    me: tuple[str, str] = ME,
) -> list[Lost]:
    return reap.lost_runs(runs, beats, NOW, reap_after, me)


# -- stale_agents -------------------------------------------------------------------------


def test_an_agent_silent_longer_than_reap_after_is_stale() -> None:
    assert reap.stale_agents([beat(THEM[0], 601)], NOW, REAP_AFTER, ME[0]) == {THEM[0]}


def test_an_agent_with_a_fresh_heartbeat_is_not_stale() -> None:
    assert reap.stale_agents([beat(THEM[0], 30)], NOW, REAP_AFTER, ME[0]) == frozenset()
    assert reap.stale_agents([beat(THEM[0], 600)], NOW, REAP_AFTER, ME[0]) == frozenset()


def test_this_agent_is_never_stale_however_silent() -> None:
    beats = [beat(ME[0], SILENT), beat(ME[0], None)]
    assert reap.stale_agents(beats, NOW, REAP_AFTER, ME[0]) == frozenset()


def test_an_agent_with_no_heartbeat_at_all_is_stale() -> None:
    assert reap.stale_agents([beat(THEM[0], None)], NOW, REAP_AFTER, ME[0]) == {THEM[0]}


def test_only_the_silent_agents_of_the_pool_are_stale() -> None:
    beats = [beat("a", SILENT), beat("b", 10), beat("c", None), beat(ME[0], SILENT)]
    assert reap.stale_agents(beats, NOW, REAP_AFTER, ME[0]) == {"a", "c"}


@pytest.mark.parametrize(("silent", "stale"), [(100, False), (120, False), (130, True)])
def test_patience_is_never_less_than_two_of_the_agents_own_heartbeat_intervals(
    silent: float, stale: bool
) -> None:
    beats = [beat(THEM[0], silent, interval=60)]
    assert (reap.stale_agents(beats, NOW, 10, ME[0]) == {THEM[0]}) is stale


# -- lost_runs: what is lost --------------------------------------------------------------


@pytest.mark.parametrize("kind", [StateType.RUNNING, StateType.PENDING])
def test_a_live_run_of_a_silent_agent_is_lost(kind: StateType) -> None:
    found = lost([run(kind, age=OLD, state_id="s7")], [beat(THEM[0], 700)])
    assert found == [Lost("r1", "s7", THEM[0], THEM[1], 700.0)]


def test_every_live_run_of_the_silent_agent_is_lost_and_nothing_else() -> None:
    runs = [
        run(StateType.RUNNING, run_id="r1"),
        run(StateType.PENDING, run_id="r2"),
        run(StateType.COMPLETED, run_id="r3"),
        run(StateType.RUNNING, agent="host-c", host="h3", run_id="r4"),
    ]
    beats = [beat(THEM[0], SILENT), beat("host-c", 5)]
    assert [x.run_id for x in lost(runs, beats)] == ["r1", "r2"]


def test_an_agent_without_a_worker_record_is_silent_since_its_runs_state() -> None:
    assert lost([run(age=700)], []) == [Lost("r1", "s1", THEM[0], THEM[1], 700.0)]
    assert lost([run(age=500)], []) == []


def test_a_worker_record_without_a_heartbeat_counts_from_the_runs_state() -> None:
    assert lost([run(age=700)], [beat(THEM[0], None)]) == [
        Lost("r1", "s1", THEM[0], THEM[1], 700.0)
    ]


# -- lost_runs: what is not ---------------------------------------------------------------


@pytest.mark.parametrize("reap_after", [0.0, -1.0])
def test_nothing_is_lost_with_reaping_off(reap_after: float) -> None:
    assert lost([run()], [beat(THEM[0], SILENT)], reap_after=reap_after) == []


def test_a_run_of_this_agent_on_this_host_is_not_lost() -> None:
    """This host's own runs are the stranded duty's."""
    assert lost([run(agent=ME[0], host=ME[1])], [beat(ME[0], SILENT)]) == []


def test_a_run_of_this_agents_name_on_another_host_is_not_lost() -> None:
    """One name on two hosts: this agent's own heartbeat hides the other's."""
    assert lost([run(agent=ME[0], host="h9")], [beat(ME[0], SILENT)]) == []
    assert lost([run(agent=ME[0], host="h9")], []) == []


@pytest.mark.parametrize(
    ("agent", "host"),
    [(None, None), (THEM[0], None), (None, THEM[1]), ("", THEM[1]), (THEM[0], "")],
    ids=["no-labels", "no-host", "no-agent", "empty-agent", "empty-host"],
)
def test_a_run_without_the_claims_labels_is_not_lost(agent: str | None, host: str | None) -> None:
    assert lost([run(agent=agent, host=host)], [beat(THEM[0], SILENT)]) == []


@pytest.mark.parametrize(
    "kind",
    [
        StateType.SCHEDULED,
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.CANCELLED,
        StateType.CRASHED,
        StateType.PAUSED,
        StateType.CANCELLING,
        None,
    ],
)
def test_a_run_that_is_not_pending_or_running_is_not_lost(kind: StateType | None) -> None:
    assert lost([run(kind)], [beat(THEM[0], SILENT)]) == []


def test_a_run_without_a_state_or_its_timestamp_is_not_lost() -> None:
    stateless = FlowRun("r1", labels=labels())
    assert lost([stateless, run(age=None, run_id="r2")], [beat(THEM[0], SILENT)]) == []


def test_a_run_whose_state_is_younger_than_reap_after_is_not_lost() -> None:
    """A claim made just before the silence: the agent is silent, its run is not old."""
    assert lost([run(age=REAP_AFTER - 1)], [beat(THEM[0], SILENT)]) == []
    assert lost([run(age=REAP_AFTER)], [beat(THEM[0], SILENT)]) == []


def test_a_run_of_an_agent_with_a_fresh_heartbeat_is_not_lost() -> None:
    assert lost([run(age=OLD)], [beat(THEM[0], 15)]) == []
    assert lost([run(age=OLD)], [beat(THEM[0], REAP_AFTER)]) == []  # not longer


def test_a_run_is_not_lost_before_two_of_its_agents_heartbeat_intervals() -> None:
    assert lost([run(age=OLD)], [beat(THEM[0], 1000, interval=600)]) == []
    assert len(lost([run(age=OLD)], [beat(THEM[0], 1201, interval=600)])) == 1


# -- lost_runs: a property ----------------------------------------------------------------

NAMES = st.sampled_from([ME[0], THEM[0], "host-c", ""])
HOSTS = st.sampled_from([ME[1], THEM[1], "h3", ""])
SECONDS = st.floats(min_value=0, max_value=5000, allow_nan=False)


@st.composite
def some_runs(draw: st.DrawFn) -> list[FlowRun]:
    count = draw(st.integers(min_value=0, max_value=8))
    return [
        run(
            draw(st.one_of(st.none(), st.sampled_from(StateType))),
            draw(st.one_of(st.none(), SECONDS)),
            draw(st.one_of(st.none(), NAMES)),
            draw(st.one_of(st.none(), HOSTS)),
            run_id=f"r{i}",
            state_id=draw(st.one_of(st.none(), st.sampled_from(["s1", "s2"]))),
        )
        for i in range(count)
    ]


beats = st.lists(
    st.builds(
        beat,
        NAMES,
        st.one_of(st.none(), SECONDS),
        st.one_of(st.none(), st.floats(min_value=0, max_value=1000, allow_nan=False)),
    ),
    max_size=5,
)


@FAST
@given(
    runs=some_runs(),
    beats=beats,
    reap_after=st.floats(min_value=-10, max_value=2000, allow_nan=False),
    me=st.tuples(NAMES, HOSTS),
)
def test_a_lost_run_is_never_this_agents_and_its_state_is_older_than_reap_after(
    runs: list[FlowRun], beats: list[Beat], reap_after: float, me: tuple[str, str]
) -> None:
    by_id = {r.id: r for r in runs}
    for found in reap.lost_runs(runs, beats, NOW, reap_after, me):
        state = by_id[found.run_id].state
        assert state is not None and state.timestamp is not None
        assert found.agent != me[0]
        assert NOW - state.timestamp > reap_after
        assert found.silent_for > reap_after
        assert state.type in (StateType.PENDING, StateType.RUNNING)


def test_a_run_of_this_agents_name_on_another_host_is_a_shared_name() -> None:
    runs = [
        run(agent=ME[0], host="h9", run_id="r1"),
        run(agent=ME[0], host="h9", run_id="r2"),
        run(agent=ME[0], host=ME[1], run_id="r3"),  # this host's own
        run(agent=THEM[0], host="h9", run_id="r4"),  # another name on h9
        run(agent=ME[0], host=None, run_id="r5"),  # no host label: cannot tell
    ]
    assert reap.name_shared(runs, ME) == {"h9": "r1"}


# -- proposal -------------------------------------------------------------------------------


def test_the_proposal_is_an_unforced_crashed_that_says_who_was_lost_and_who_reaped() -> None:
    proposal = reap.proposal(Lost("r1", "s1", "host-a", "h1", 700.4), ("host-b", "h2"), 600)
    assert (proposal.type, proposal.name, proposal.force) == (StateType.CRASHED, "Crashed", False)
    assert proposal.message == (
        "Flow run infrastructure lost with its host: agent 'host-a' on h1 has sent no "
        "heartbeat for 700s (--reap-after 600s); marked Crashed by agent 'host-b' on h2."
    )


def test_two_reapers_of_the_same_run_and_state_propose_the_same_transition() -> None:
    """Prefect takes the first and rejects the second as a duplicate."""
    one = reap.proposal(Lost("r1", "s1", *THEM, 700), ("host-b", "h2"), 600)
    other = reap.proposal(Lost("r1", "s1", *THEM, 712), ("host-c", "h3"), 900)
    assert one.transition_id is not None
    assert one.transition_id == other.transition_id
    assert one.message != other.message


def test_a_later_state_of_the_same_run_gets_another_transition() -> None:
    """A later Running (after a retry) must be reapable again, not rejected as a duplicate."""
    first = reap.proposal(Lost("r1", "s1", *THEM, 700), ME, 600)
    later = reap.proposal(Lost("r1", "s2", *THEM, 700), ME, 600)
    another_run = reap.proposal(Lost("r2", "s1", *THEM, 700), ME, 600)
    ids = {first.transition_id, later.transition_id, another_run.transition_id}
    assert len(ids) == 3


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


class RecordedRunLogs:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int]] = []

    def emit(self, flow_run_id: str, message: str, level: int = logging.INFO) -> None:
        self.lines.append((flow_run_id, message, level))

    def close(self, timeout: float = 2.0) -> None:
        pass


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
