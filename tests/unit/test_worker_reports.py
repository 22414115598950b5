"""The worker and the Prefect API: reports the API could not take kept in the spool's
outbox (and those it refuses or takes, not kept), and the wait for the API after the
flow. A real Worker and spool, a scripted fake API client, and real child processes for
the flows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.api.outbox import PID, STATE, Outbox
from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from agent.core.spec import JobSpec, dumps
from agent.spool.moves import CUR, DONE, Spool
from agent.worker.shim import write_status
from tests.unit.test_cancel import outcome, spool_run
from tests.unit.worker_api_support import (
    DOWN,
    HOST,
    POOL,
    URL,
    CountingLauncher,
    ScriptedClient,
    fast_probes,
    in_state,
    make_worker,
    reports,
    run_once,
)

__all__ = ["fast_probes"]  # the autouse fixture, imported for pytest to find

# -- reports kept in the outbox ------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TransientApiError("set_flow_run_state", f"cannot reach {URL}"),
        TransientApiError("set_flow_run_state", "HTTP 503: Service Unavailable", 503),
        AuthError("set_flow_run_state", "HTTP 401, the API key is wrong", 401),
        ApiError("set_flow_run_state", "HTTP 500: Internal Server Error", 500),
    ],
    ids=["unreachable", "503", "401", "500"],
)
def test_a_crashed_report_that_fails_waits_in_the_outbox(spool: Spool, error: ApiError) -> None:
    client = ScriptedClient(["PENDING"], after="RUNNING")  # the engine left it Running
    client.errors["set_flow_run_state"] = error
    run_id, launcher = run_once(spool, client)
    assert len(launcher.handles) == 1
    assert outcome(spool, run_id) == "crashed"
    [report] = reports(spool)
    assert report.kind == STATE
    assert report.flow_run_id == run_id
    assert report.force is False
    assert report.state == {
        "type": "CRASHED",
        "name": "Crashed",
        "message": "Flow run infrastructure exited with status code 0 without reporting a "
        "final state.",
    }
    assert report.source == "worker w1"
    assert report.created > 0


def test_a_forced_cancelled_report_that_fails_waits_in_the_outbox(spool: Spool) -> None:
    client = ScriptedClient(["CANCELLING"])
    client.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "HTTP 502", 502)
    run_id, launcher = run_once(spool, client)
    assert launcher.handles == []
    [report] = reports(spool)
    assert (report.kind, report.flow_run_id, report.force) == (STATE, run_id, True)
    assert report.state is not None and report.state["type"] == "CANCELLED"
    assert report.state["message"] == "Cancelled by agent worker w1 before it started"
    assert in_state(spool, DONE) == [f"{run_id}.json", f"{run_id}.outcome"]


def test_a_cancelled_kept_in_the_outbox_before_the_start_is_noted_cancelled(
    spool: Spool,
) -> None:
    client = ScriptedClient(["CANCELLING"])
    client.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "HTTP 502", 502)
    run_id, _ = run_once(spool, client)
    assert outcome(spool, run_id) == "cancelled"


def test_a_failed_report_that_fails_waits_in_the_outbox(spool: Spool, tmp_path: Path) -> None:
    client = ScriptedClient(["PENDING"])
    client.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    launcher = CountingLauncher(spool, client)
    worker = make_worker(spool, client, launcher)
    run_id = "3f1c0f9e-0000-4000-8000-000000000009"
    missing = tmp_path / "no-such-dir"
    spec = JobSpec(
        flow_run_id=run_id,
        pool=POOL,
        transition_id="claim-1",
        agent_name="agent",
        job_variables={"working_dir": str(missing)},
    )
    spool.write_ahead(run_id, dumps(spec))
    spool.publish(run_id)
    lease = spool.take()
    assert lease is not None
    try:
        worker.handle(lease)
    finally:
        lease.release()
    assert launcher.handles == []
    [report] = reports(spool)
    assert report.state is not None and report.state["type"] == "FAILED"
    assert str(missing) in report.state["message"]
    assert report.force is False


def test_when_the_run_cannot_be_read_after_the_flow_the_worker_waits_and_keeps_its_end(
    spool: Spool,
) -> None:
    """The API went away while the flow ran: Crashed is not sent blind (the engine may
    have reported Completed) nor kept in the outbox; the worker waits for the API,
    reads the run, and keeps the end the flow reported."""
    client = ScriptedClient(["PENDING", DOWN, DOWN], after="COMPLETED")
    run_id, launcher = run_once(spool, client)
    assert len(launcher.handles) == 1
    assert client.reads == 4  # one look before, three after: two away, one answered
    assert client.proposed == []
    assert outcome(spool, run_id) == "completed"
    assert reports(spool) == []


def test_when_the_run_cannot_be_read_after_the_flow_the_worker_waits_then_reports_crashed(
    spool: Spool,
) -> None:
    client = ScriptedClient(["PENDING", DOWN, DOWN], after="RUNNING")
    run_id, launcher = run_once(spool, client)
    assert len(launcher.handles) == 1
    [(state, force)] = client.proposed  # sent once the API answers, not kept
    assert state["type"] == "CRASHED" and force is False
    assert outcome(spool, run_id) == "crashed"
    assert reports(spool) == []


def test_a_stop_while_waiting_for_the_api_after_the_flow_leaves_the_spec_for_adoption(
    spool: Spool,
) -> None:
    """Nothing goes to the outbox: the spec stays in cur/ and the next worker adopts it,
    settling it by its exit status once the API answers."""
    client = ScriptedClient(["PENDING"], after=DOWN)
    launcher = CountingLauncher(spool, client)
    worker = make_worker(spool, client, launcher)
    client.on_read = lambda reads: worker.stop() if reads >= 3 else None
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    try:
        worker.handle(lease)
    finally:
        lease.release()
    assert len(launcher.handles) == 1
    assert client.proposed == []
    assert reports(spool) == []
    assert in_state(spool, CUR) == [f"{run_id}.json"]
    assert in_state(spool, DONE) == []
    # What the shim records when the flow ends (the fake launcher has no shim).
    write_status(spool.execution_path(run_id, "claim-1"), {"phase": "ended", "returncode": 0})

    adopted = spool.adopt()
    assert adopted is not None and adopted.adopted
    client2 = ScriptedClient([], after="RUNNING")
    launcher2 = CountingLauncher(spool, client2)
    try:
        make_worker(spool, client2, launcher2).handle(adopted)
    finally:
        adopted.release()
    assert launcher2.handles == []  # never started twice
    [(state, _)] = client2.proposed
    assert state["type"] == "CRASHED"
    assert state["message"] == (
        "Flow run infrastructure exited with status code 0 without reporting a final state."
    )
    assert outcome(spool, run_id) == "crashed"


def test_when_the_run_is_gone_after_the_flow_nothing_is_reported(spool: Spool) -> None:
    """A 404 after the exit: the run was deleted; a Crashed would be refused the same way."""
    client = ScriptedClient(["PENDING", NotFoundError("read_flow_run", "HTTP 404", 404)])
    run_id, _ = run_once(spool, client)
    assert client.proposed == []
    assert outcome(spool, run_id) == "deleted"
    assert reports(spool) == []


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (TransientApiError("update_flow_run", f"cannot reach {URL}"), True),
        (TransientApiError("update_flow_run", "HTTP 429: Too Many Requests", 429), True),
        (AuthError("update_flow_run", "HTTP 403, access denied", 403), True),
        (NotFoundError("update_flow_run", "HTTP 404: Flow run not found", 404), False),
        (ApiError("update_flow_run", "HTTP 422: Unprocessable Entity", 422), False),
    ],
    ids=["unreachable", "429", "403", "404", "422"],
)
def test_a_pid_report_that_fails_waits_in_the_outbox_when_worth_it(
    spool: Spool, error: ApiError, kept: bool
) -> None:
    client = ScriptedClient(["PENDING"], after="COMPLETED")
    client.errors["update_flow_run"] = error
    run_id, launcher = run_once(spool, client)
    [handle] = launcher.handles
    assert client.pids == [f"{HOST}:{handle.pid}"]
    assert outcome(spool, run_id) == "completed"  # the run itself goes on
    if not kept:
        assert reports(spool) == []
        return
    [report] = reports(spool)
    assert report.kind == PID
    assert report.flow_run_id == run_id
    assert report.infrastructure_pid == f"{HOST}:{handle.pid}"
    assert report.source == "worker w1"


def test_reports_the_server_refuses_are_not_kept(spool: Spool) -> None:
    client = ScriptedClient(["PENDING"], after="RUNNING")
    client.errors["update_flow_run"] = ApiError("update_flow_run", "HTTP 422: bad pid", 422)
    client.errors["set_flow_run_state"] = ApiError("set_flow_run_state", "HTTP 422: bad", 422)
    run_id, launcher = run_once(spool, client)
    assert len(launcher.handles) == 1
    assert len(client.pids) == 1 and len(client.proposed) == 1  # both were tried
    assert outcome(spool, run_id) == "crashed"
    assert reports(spool) == []
    assert not (spool.root / "outbox").exists() or list((spool.root / "outbox").iterdir()) == []


def test_reports_that_go_through_are_not_kept(spool: Spool) -> None:
    client = ScriptedClient(["PENDING"], after="RUNNING")
    run_id, _ = run_once(spool, client)
    [(state, force)] = client.proposed
    assert state["type"] == "CRASHED" and force is False
    assert len(client.pids) == 1
    assert outcome(spool, run_id) == "crashed"
    assert reports(spool) == []


def test_a_report_kept_by_the_worker_reads_back_as_written(spool: Spool) -> None:
    client = ScriptedClient(["PENDING"], after="RUNNING")
    client.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    run_once(spool, client)
    [path] = Outbox(spool.root).paths()
    body = json.loads(path.read_bytes())
    assert body["kind"] == STATE and body["force"] is False
    assert body["state"] == client.proposed[0][0]
