"""The worker and the Prefect API: the look at the run before its flow starts (waiting
out an API that cannot be reached, never starting a run that is final, Cancelling or
deleted), and reports the API could not take kept in the spool's outbox. A real Worker
and spool, a scripted fake API client, and real child processes for the flows."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.api.outbox import PID, STATE, Outbox, Report
from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from agent.core.spec import JobSpec, dumps
from agent.settings import defaults
from agent.settings.config import ApiSettings, WorkerConfig
from agent.spool.moves import CUR, DONE, NEW, RUNS, Spool
from agent.spool.registry import Registry
from agent.worker.loop import Worker
from agent.worker.shim import write_status
from tests.unit.test_cancel import ChildHandle, ChildLauncher, outcome, spool_run

URL = "http://prefect.invalid/api"
POOL = "pool"
HOST = "host-1"
DOWN = TransientApiError("read_flow_run", f"cannot reach {URL}")

Answer = str | ApiError  # a state type, or what the call raises


class ScriptedClient(PrefectClient):
    """``reads`` answer read_flow_run in turn, then ``after`` (what the engine left);
    ``errors`` maps a call name to what it raises; ``on_read`` runs at each read."""

    def __init__(self, reads: Sequence[Answer], after: Answer = "COMPLETED") -> None:
        super().__init__(ApiSettings(url=URL))
        self.script = list(reads)
        self.after = after
        self.errors: dict[str, ApiError] = {}
        self.read_deadlines: list[float | None] = []
        self.proposed: list[tuple[dict[str, Any], bool]] = []
        self.pids: list[str] = []
        self.on_read: Callable[[int], None] | None = None

    @property
    def reads(self) -> int:
        return len(self.read_deadlines)

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_flow_run":
            self.read_deadlines.append(deadline)
            if self.on_read is not None:
                self.on_read(self.reads)
            answer = self.script.pop(0) if self.script else self.after
            if isinstance(answer, ApiError):
                raise answer
            # Our claim's transition id: a PENDING read is our Pending.
            state = {"type": answer, "state_details": {"transition_id": "claim-1"}}
            return {"id": path.rsplit("/", 1)[1], "state": state}
        if call == "set_flow_run_state":
            self.proposed.append((json["state"], json["force"]))
        if call == "update_flow_run":
            self.pids.append(json["infrastructure_pid"])
        if call in self.errors:
            raise self.errors[call]
        if call == "set_flow_run_state":
            return {"status": "ACCEPT", "state": json["state"]}
        return None


class CountingLauncher(ChildLauncher):
    """A real child (``pass`` unless told), noting how many reads came before it."""

    def __init__(self, spool: Spool, client: ScriptedClient, code: str = "pass") -> None:
        super().__init__(spool, code, cancel=False)
        self.client = client
        self.reads_at_start: list[int] = []
        self.envs: list[dict[str, str]] = []

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        run_dir: Path,
        keep_fds: Sequence[int],
        echo_prefix: str | None,
        cgroups: Sequence[Path] = (),
    ) -> ChildHandle:
        self.reads_at_start.append(self.client.reads)
        self.envs.append(dict(env))
        return super().start(argv, env, cwd, run_dir, keep_fds, echo_prefix)


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "API_PROBE_SECONDS", 0.01)


def make_worker(spool: Spool, client: ScriptedClient, launcher: ChildLauncher) -> Worker:
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id="w1",
        flow_python=sys.executable,
        pool=POOL,
        hostname=HOST,
        cancel_watch=0.05,
    )
    return Worker(config, client, spool, Registry(spool.root), launcher, environ={})


def run_once(
    spool: Spool, client: ScriptedClient, run_id: str | None = None
) -> tuple[str, CountingLauncher]:
    """Spool a run and have a worker handle it; the lease is released after."""
    launcher = CountingLauncher(spool, client)
    worker = make_worker(spool, client, launcher)
    run_id = spool_run(spool, run_id)
    lease = spool.take()
    assert lease is not None
    try:
        worker.handle(lease)
    finally:
        lease.release()
    return run_id, launcher


def reports(spool: Spool) -> list[Report]:
    found = []
    for _, report, problem in Outbox(spool.root).pending():
        assert report is not None, problem
        found.append(report)
    return found


def in_state(spool: Spool, state: str) -> list[str]:
    return sorted(p.name for p in spool.dir(state).iterdir())


# -- the look before the start -----------------------------------------------------------


def test_waits_while_the_api_cannot_be_reached_then_starts_the_flow(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    client = ScriptedClient([DOWN, DOWN, DOWN, "PENDING"], after="COMPLETED")
    with caplog.at_level(logging.INFO, logger="agent.worker"):
        run_id, launcher = run_once(spool, client)
    assert len(launcher.handles) == 1
    assert launcher.reads_at_start == [4]  # started only once the run could be read
    assert launcher.handles[0].proc.returncode == 0
    # Each look is one attempt (the worker's loop does the waiting), the settling read
    # after the flow too: it waits for the API the same way.
    assert client.read_deadlines == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert client.proposed == []
    assert outcome(spool, run_id) == "completed"
    assert f"flow run {run_id} waits for the Prefect API to start" in caplog.text
    assert caplog.text.count("waits for the Prefect API") == 1  # said once, not per look
    assert "answers again after" in caplog.text


def test_a_run_that_answers_pending_at_once_starts_without_waiting(spool: Spool) -> None:
    client = ScriptedClient(["PENDING"], after="COMPLETED")
    run_id, launcher = run_once(spool, client)
    assert launcher.reads_at_start == [1]
    assert outcome(spool, run_id) == "completed"


@pytest.mark.parametrize("final", ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"])
def test_a_run_final_already_is_not_started(spool: Spool, final: str) -> None:
    client = ScriptedClient([final])
    run_id, launcher = run_once(spool, client)
    assert launcher.handles == []
    assert client.proposed == []  # its state is the truth: nothing replaces it
    assert outcome(spool, run_id) == final.lower()
    assert not (spool.dir(RUNS) / run_id).exists()
    assert reports(spool) == []


def test_a_cancelling_run_is_not_started_and_is_reported_cancelled(spool: Spool) -> None:
    client = ScriptedClient(["CANCELLING"])
    run_id, launcher = run_once(spool, client)
    assert launcher.handles == []
    [(state, force)] = client.proposed
    assert state == {
        "type": "CANCELLED",
        "name": "Cancelled",
        "message": "Cancelled by agent worker w1 before it started",
    }
    assert force is True
    assert outcome(spool, run_id) == "cancelled"


def test_a_deleted_run_is_not_started(spool: Spool) -> None:
    client = ScriptedClient([NotFoundError("read_flow_run", "HTTP 404: Flow run not found", 404)])
    run_id, launcher = run_once(spool, client)
    assert launcher.handles == []
    assert client.proposed == []
    assert client.reads == 1  # a 404 is not waited out
    assert outcome(spool, run_id) == "not started"  # Prefect shows nothing to count
    assert reports(spool) == []


def test_a_cancel_request_during_the_wait_settles_the_run_without_starting_it(
    spool: Spool,
) -> None:
    client = ScriptedClient([DOWN] * 1000)
    run_id = spool_run(spool)

    def cancel_at_the_second_look(reads: int) -> None:
        if reads == 2:
            spool.request_cancel(run_id, "claim-1", "Cancelling in Prefect")

    client.on_read = cancel_at_the_second_look
    run_once_spooled(spool, client, run_id)
    assert client.reads == 2
    [(state, force)] = client.proposed
    assert state["type"] == "CANCELLED" and force
    assert outcome(spool, run_id) == "cancelled"


def run_once_spooled(spool: Spool, client: ScriptedClient, run_id: str) -> CountingLauncher:
    launcher = CountingLauncher(spool, client)
    worker = make_worker(spool, client, launcher)
    lease = spool.take()
    assert lease is not None and lease.run_id == run_id
    try:
        worker.handle(lease)
    finally:
        lease.release()
    assert launcher.handles == []
    return launcher


def test_a_stop_during_the_wait_leaves_the_run_to_the_next_worker(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "API_PROBE_SECONDS", 60.0)  # only a stop ends the wait
    client = ScriptedClient([DOWN] * 1000)
    launcher = CountingLauncher(spool, client)
    worker = make_worker(spool, client, launcher)
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    stopper = threading.Timer(0.1, worker.stop)
    stopper.start()
    started = time.monotonic()
    try:
        worker.handle(lease)
    finally:
        stopper.cancel()
        lease.release()
    assert time.monotonic() - started < 30  # the wait is interruptible
    assert launcher.handles == []
    assert client.proposed == []
    assert in_state(spool, CUR) == [f"{run_id}.json"]
    assert in_state(spool, DONE) == [] and in_state(spool, NEW) == []
    assert not (spool.dir(RUNS) / run_id).exists()
    assert reports(spool) == []

    # The next worker adopts it (never started: it is run, after the same look).
    adopted = spool.adopt()
    assert adopted is not None and adopted.run_id == run_id and adopted.adopted
    client2 = ScriptedClient(["PENDING"], after="COMPLETED")
    launcher2 = CountingLauncher(spool, client2)
    try:
        make_worker(spool, client2, launcher2).handle(adopted)
    finally:
        adopted.release()
    assert len(launcher2.handles) == 1
    assert outcome(spool, run_id) == "completed"


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


# -- what the flow is started with ---------------------------------------------------------------


def spool_with_env(spool: Spool, run_env: dict[str, str]) -> str:
    run_id = "3f1c0f9e-0000-4000-8000-00000000000a"
    spec = JobSpec(
        flow_run_id=run_id,
        pool=POOL,
        transition_id="claim-1",
        agent_name="agent",
        job_variables={"env": run_env},
    )
    spool.write_ahead(run_id, dumps(spec))
    spool.publish(run_id)
    return run_id


@pytest.mark.parametrize(
    ("run_env", "expected"), [({}, "8"), ({"PREFECT_CLIENT_MAX_RETRIES": "2"}, "2")]
)
def test_the_flow_gets_the_client_retries_default_unless_its_run_sets_it(
    spool: Spool, run_env: dict[str, str], expected: str
) -> None:
    client = ScriptedClient(["PENDING"], after="COMPLETED")
    run_id = spool_with_env(spool, run_env)
    launcher = CountingLauncher(spool, client)
    lease = spool.take()
    assert lease is not None
    try:
        make_worker(spool, client, launcher).handle(lease)
    finally:
        lease.release()
    [env] = launcher.envs
    assert env["PREFECT_CLIENT_MAX_RETRIES"] == expected
    assert env["PREFECT__FLOW_RUN_ID"] == run_id
