"""agent/core/reap.py: which runs another agent of the pool holds although that agent's
heartbeat has been silent longer than --reap-after (host loss), and the Crashed proposed
for them.

The rules get plain data in and give a decision out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import reap
from agent.core.reap import Beat, Lost
from agent.core.states import FlowRun, RunState, StateType
from tests.unit.reap_support import ME, OLD, REAP_AFTER, SILENT, THEM, labels
from tests.unit.strategies import FAST

NOW = 1_800_000_000.0


def beat(name: str, silent: float | None, interval: float | None = None) -> Beat:
    """An agent's worker record whose last heartbeat was ``silent`` seconds before NOW."""
    return Beat(name, None if silent is None else NOW - silent, interval)


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
