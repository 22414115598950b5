"""Run log lines against a real Prefect server: they land on the run, and a dead or
picky API never raises into the caller."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.runlogs import ship_to
from agent.core.errors import ApiError
from agent.settings.config import ApiSettings
from tests.integration.harness import free_port, wait_for


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("agent_run_logs_dropped_total", {"reason": reason}) or 0.0


def sent() -> float:
    return REGISTRY.get_sample_value("agent_run_logs_sent_total") or 0.0


def new_flow_run(client: PrefectClient) -> str:
    flow = client.request("create_flow", "POST", "/flows/", {"name": "runlogs-test"})
    run = client.request(
        "create_flow_run",
        "POST",
        "/flow_runs/",
        {"flow_id": flow["id"], "name": f"runlogs-{uuid.uuid4().hex[:8]}"},
    )
    return str(run["id"])


def logs_of(client: PrefectClient, run_id: str) -> list[dict[str, Any]]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}}
    result: list[dict[str, Any]] = client.request("read_logs", "POST", "/logs/filter", body)
    return result


def test_lines_land_on_the_flow_run_in_order(client: PrefectClient) -> None:
    run_id = new_flow_run(client)
    before = sent()
    started = datetime.now(UTC)
    shipper = ship_to(client, "local-agent-test", flush_interval=0.05)
    shipper.emit(run_id, "Submitted for execution by agent a on host h")
    shipper.emit(run_id, "Process started: PID 123", logging.WARNING)
    shipper.emit(run_id, "Process exited with code 0 after 3.2 s")
    shipper.close(timeout=5.0)
    assert sent() - before == 3
    logs = logs_of(client, run_id)
    assert [(log["name"], log["level"], log["message"]) for log in logs] == [
        ("local-agent-test", 20, "Submitted for execution by agent a on host h"),
        ("local-agent-test", 30, "Process started: PID 123"),
        ("local-agent-test", 20, "Process exited with code 0 after 3.2 s"),
    ]
    for log in logs:
        assert log["flow_run_id"] == run_id and log["task_run_id"] is None
        stamp = datetime.fromisoformat(log["timestamp"].replace("Z", "+00:00"))
        assert started - timedelta(seconds=1) <= stamp <= datetime.now(UTC)


def test_the_server_rejects_a_whole_batch_for_one_bad_run_id(client: PrefectClient) -> None:
    """Why emit refuses a run id that is not a UUID: it would sink its batch-mates."""
    run_id = new_flow_run(client)
    good = {
        "name": "local-agent-test",
        "level": 20,
        "message": "good",
        "timestamp": datetime.now(UTC).isoformat(),
        "flow_run_id": run_id,
        "task_run_id": None,
    }
    with pytest.raises(ApiError) as caught:
        client.create_logs([good, {**good, "flow_run_id": "not-a-uuid"}], deadline=0)
    assert caught.value.status == 422
    assert logs_of(client, run_id) == []

    shipper = ship_to(client, "local-agent-test", flush_interval=0.05)
    before = dropped("invalid")
    shipper.emit("not-a-uuid", "bad")
    shipper.emit(run_id, "good")
    shipper.close(timeout=5.0)
    assert dropped("invalid") - before == 1
    assert [log["message"] for log in logs_of(client, run_id)] == ["good"]


def test_a_run_id_the_server_does_not_know_is_harmless(client: PrefectClient) -> None:
    unknown = str(uuid.uuid4())
    before = sent(), dropped("rejected")
    shipper = ship_to(client, "local-agent-test", flush_interval=0.05)
    shipper.emit(unknown, "for nobody")
    shipper.close(timeout=5.0)
    # The server keeps logs of unknown runs (no foreign key): sent, not rejected.
    assert (sent(), dropped("rejected")) == (before[0] + 1, before[1])


def test_an_unreachable_api_never_raises_and_drops_the_overflow() -> None:
    dead = PrefectClient(
        ApiSettings(
            url=f"http://127.0.0.1:{free_port()}/api",
            connect_timeout=0.5,
            read_timeout=0.5,
            retry_deadline=0.2,
        )
    )
    run_id = str(uuid.uuid4())
    attempts = REGISTRY.get_sample_value(
        "agent_api_errors_total", {"endpoint": "create_logs", "kind": "connection"}
    )
    before = {r: dropped(r) for r in ("queue_full", "shutdown", "rejected")}
    before_sent = sent()
    shipper = ship_to(dead, "local-agent-test", max_pending=5, batch_size=2, flush_interval=0.02)
    slowest = 0.0
    for i in range(20):
        started = time.monotonic()
        shipper.emit(run_id, f"line {i}")
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.05
    wait_for(
        lambda: (
            (
                REGISTRY.get_sample_value(
                    "agent_api_errors_total", {"endpoint": "create_logs", "kind": "connection"}
                )
                or 0.0
            )
            > (attempts or 0.0)
        ),
        10,
        "a failed send",
    )
    started = time.monotonic()
    shipper.close(timeout=1.0)
    assert time.monotonic() - started < 2.0
    assert shipper._thread is not None
    shipper._thread.join(5.0)  # its last bookkeeping may follow close()'s return
    delta = {r: dropped(r) - before[r] for r in before}
    assert delta["queue_full"] >= 20 - 5 - 2  # all but the queue and one batch in flight
    assert delta["queue_full"] + delta["shutdown"] == 20  # every line accounted for
    assert delta["rejected"] == 0 and sent() == before_sent
