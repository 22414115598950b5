"""The worker and the Prefect API: the look at the run before its flow starts (waiting
out an API that cannot be reached, never starting a run that is final, Cancelling or
deleted). A real Worker and spool, a scripted fake API client, and real child processes
for the flows."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from agent.core.errors import NotFoundError
from agent.settings import defaults
from agent.spool.moves import CUR, DONE, NEW, RUNS, Spool
from tests.unit.test_cancel import outcome, spool_run
from tests.unit.worker_api_support import (
    DOWN,
    CountingLauncher,
    ScriptedClient,
    fast_probes,
    in_state,
    make_worker,
    reports,
    run_once,
)

__all__ = ["fast_probes"]  # the autouse fixture, imported for pytest to find


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
