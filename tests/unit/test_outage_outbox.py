"""The outbox through an API outage: reports delivered before the poll, kept while
the API is away and delivered once it is back, and the Cancelled reports the poller
makes itself. A real Poller on the fakes of outage_support.py, its outbox real files
in tmp_path."""

from __future__ import annotations

import pytest

from agent.api.outbox import PID, STATE, Report, parse
from agent.core.errors import ApiError, TransientApiError
from agent.core.spec import JobSpec, dumps
from agent.spool.files import read_json_object
from agent.spool.moves import DONE
from tests.unit.outage_support import CRASHED, URL, World, go_down, world

__all__ = ["world"]  # the fixtures, imported for pytest to find


# -- the outbox in a tick -----------------------------------------------------------------------


def test_the_outbox_is_delivered_before_the_poll(world: World) -> None:
    world.poller.tick()
    world.client.calls.clear()
    world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.poller.tick()
    names = world.client.names()
    assert names.index("read_flow_run") < names.index("set_flow_run_state")
    assert names.index("set_flow_run_state") < names.index("get_scheduled_flow_runs")
    assert world.client.states["r1"] == "CRASHED"
    assert world.outbox.count() == 0
    assert world.poller.health()[0]


def test_the_outbox_goes_first_in_the_first_tick_after_an_outage(world: World) -> None:
    go_down(world)
    world.outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    world.client.fail(None)
    world.client.calls.clear()
    world.poller.tick()
    assert world.client.names() == ["update_flow_run", "get_scheduled_flow_runs"]
    assert world.outbox.count() == 0
    assert world.poller.s.outage.down_since is None


@pytest.mark.parametrize("call", ["read_flow_run", "set_flow_run_state"])
def test_a_transient_failure_delivering_the_outbox_is_an_outage(world: World, call: str) -> None:
    world.poller.tick()
    path = world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.client.calls.clear()
    world.client.fail(TransientApiError(call, "HTTP 503: Service Unavailable", 503), call)
    assert world.poller.tick() == 0
    assert path.exists()
    assert "get_scheduled_flow_runs" not in world.client.names()  # no claims meanwhile
    assert world.poller.s.outage.down_since is not None
    assert world.poller.s.last_error == f"outbox delivery: {call}: HTTP 503: Service Unavailable"
    reason = world.poller.health()[1]["api"]["reason"]
    assert reason.endswith("; 1 reports wait in the outbox")

    world.client.fail(None)
    world.poller.tick()
    assert not path.exists()
    assert world.client.states["r1"] == "CRASHED"
    assert world.poller.s.outage.down_since is None


def test_one_report_the_server_keeps_failing_does_not_stop_claims_for_good(world: World) -> None:
    """The API answers every call but this report's (an HTTP 500 the server gives it each
    time: a server bug, a payload it chokes on). Kept and retried, fine; but the claims
    of every other run must not wait on it forever."""
    world.poller.tick()
    world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.client.fail(
        ApiError("set_flow_run_state", "HTTP 500: Internal Server Error", 500), "set_flow_run_state"
    )
    world.client.calls.clear()
    for _ in range(5):
        world.poller.tick()
    assert "get_scheduled_flow_runs" in world.client.names()


def test_an_outbox_the_poller_cannot_list_does_not_end_the_poller(world: World) -> None:
    """Something took the outbox's name (or the folder became unreadable, or the disk
    fails): the loop must not die of it (`run` has no guard around `tick`, which catches
    only ApiError and SpoolError), and health must still answer."""
    world.outbox.dir.write_bytes(b"")
    world.poller.tick()
    world.poller.health()


# -- reports the poller makes itself -----------------------------------------------------------


def cancel_a_waiting_run(world: World) -> str:
    """A spec waiting in new/ whose run Prefect shows Cancelling: the cancellation duty
    takes it out of the spool and reports it Cancelled (through the poller's reporter)."""
    run_id = "r1"
    world.spool.ensure()
    world.spool.write_ahead(run_id, dumps(JobSpec(run_id, "pool", "claim-1", "a1")))
    world.spool.publish(run_id)
    world.spool.waiting = [run_id]
    world.client.cancelling = {run_id}
    world.poller.cancellations.run()
    world.spool.waiting = []
    assert world.spool.dir(DONE).joinpath(f"{run_id}.json").exists()
    return run_id


def test_a_cancelled_report_that_fails_waits_in_the_outbox(world: World) -> None:
    world.client.fail(
        TransientApiError("set_flow_run_state", f"cannot reach {URL}"), "set_flow_run_state"
    )
    cancel_a_waiting_run(world)
    [(path, report, problem)] = list(world.outbox.pending())
    assert problem == "" and report is not None
    assert path.parent == world.spool.root / "outbox"
    assert report.kind == STATE
    assert report.flow_run_id == "r1"
    assert report.force is True
    assert report.state == {
        "type": "CANCELLED",
        "name": "Cancelled",
        "message": "Cancelled by agent a1 before it started",
    }
    assert report.source == "poller"
    assert parse(read_json_object(path) or {}) == report

    # Delivered once the API answers: forced over the Cancelling the run is in.
    world.client.fail(None)
    world.client.states["r1"] = "CANCELLING"
    world.poller.tick()
    assert world.client.states["r1"] == "CANCELLED"
    assert world.outbox.count() == 0


def test_a_cancelled_report_the_server_refuses_is_not_kept(world: World) -> None:
    world.client.fail(
        ApiError("set_flow_run_state", "HTTP 422: Unprocessable Entity", 422),
        "set_flow_run_state",
    )
    cancel_a_waiting_run(world)
    assert world.client.names().count("set_flow_run_state") == 1  # tried once
    assert world.outbox.count() == 0
