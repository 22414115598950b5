"""The labels a claim puts on its run (agent, pool, host) land even when the server is
too busy to take them at once: a real Poller on a real spool, a fake API that answers the
labels call with 503 as a loaded SQLite server does. Without its labels a run cannot be
found by the stranded look or by a fleet's reaper."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.claim import HOST_LABEL, POOL_LABEL, WORKER_LABEL
from agent.core.errors import ApiError, NotFoundError, TransientApiError
from agent.core.jobvars import base_job_template
from agent.poller.loop import Poller
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import NEW, Spool
from tests.unit.test_health import FakeRegistry

URL = "http://prefect.invalid/api"
POOL = "pool"
NAME = "agent-7"


class LabelsClient(PrefectClient):
    """Due runs to claim; the labels call answers with what `answers` holds, in turn
    (an exception to raise, or None for success), then succeeds."""

    def __init__(self, runs: int = 1) -> None:
        super().__init__(ApiSettings(url=URL))
        self.states = {str(uuid.uuid4()): {"type": "SCHEDULED"} for _ in range(runs)}
        self.answers: list[Exception | None] = []
        self.labelled: dict[str, dict[str, str]] = {}
        self.label_calls: list[str] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_work_pool":
            return {"name": POOL, "type": "local-agent", "base_job_template": base_job_template()}
        if call == "get_scheduled_flow_runs":
            return [
                {"flow_run": {"id": i, "name": "tidy-otter", "state": state}}
                for i, state in self.states.items()
                if state["type"] == "SCHEDULED"
            ]
        if call == "set_flow_run_state":
            run_id = path.split("/")[2]
            self.states[run_id] = json["state"]
            return {"status": "ACCEPT", "state": json["state"]}
        if call == "update_flow_run_labels":
            run_id = path.split("/")[2]
            self.label_calls.append(run_id)
            answer = self.answers.pop(0) if self.answers else None
            if answer is not None:
                raise answer
            self.labelled[run_id] = {**self.labelled.get(run_id, {}), **json}
            return None
        if path.endswith("/filter"):
            return []  # the cancellation and stranded looks: nothing to do
        return None


BUSY = TransientApiError("update_flow_run_labels", "HTTP 503: Service Unavailable", 503)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # The duties' periods are read on the monotonic clock: the test moves it by hand.
    clock = Clock()
    monkeypatch.setattr("agent.poller.loop.time.monotonic", clock)
    return clock


def poller(tmp_path: Path, client: LabelsClient) -> tuple[Poller, Spool]:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    config = PollerConfig(
        api=ApiSettings(url=URL), pool=POOL, name=NAME, spool_dir=spool.root, cloud_logs=False
    )
    return Poller(config, client, spool, FakeRegistry(idle=len(client.states))), spool


def expected(config_host: str) -> dict[str, str]:
    return {WORKER_LABEL: NAME, POOL_LABEL: POOL, HOST_LABEL: config_host}


def test_a_claim_whose_labels_got_a_503_runs_at_once_and_is_labelled_at_the_next_round(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    client = LabelsClient()
    client.answers = [BUSY]
    agent, spool = poller(tmp_path, client)
    (run_id,) = client.states
    caplog.set_level(logging.INFO, "agent")

    agent.tick()
    assert spool.run_ids(NEW) == [run_id]  # the run is not held back for its labels
    assert client.labelled == {}
    assert f"flow run {run_id}: could not label it, will try again: " in caplog.text

    clock.now += 1.0
    agent.tick()
    assert client.labelled == {run_id: expected(agent.s.config.hostname)}
    assert f"flow run {run_id}: labelled" in caplog.text

    calls = len(client.label_calls)
    clock.now += 1.0
    agent.tick()
    assert len(client.label_calls) == calls  # labelled once: not asked again


def test_labels_that_keep_failing_are_tried_every_few_seconds_until_they_land(
    tmp_path: Path, clock: Clock
) -> None:
    client = LabelsClient()
    client.answers = [BUSY, BUSY, BUSY]
    agent, _ = poller(tmp_path, client)
    (run_id,) = client.states

    agent.tick()  # the claim's own try
    clock.now += 1.0
    agent.tick()  # the duty's first try: 503 again
    assert client.label_calls == [run_id, run_id]
    clock.now += defaults.LABEL_RETRY_SECONDS / 2
    agent.tick()
    assert client.label_calls == [run_id, run_id]  # not before its retry period
    clock.now += defaults.LABEL_RETRY_SECONDS
    agent.tick()  # 503 a third time
    clock.now += defaults.LABEL_RETRY_SECONDS
    agent.tick()
    assert client.labelled == {run_id: expected(agent.s.config.hostname)}
    assert agent.s.unlabelled == set()


def test_a_refused_or_deleted_run_is_given_up_and_the_others_still_labelled(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    client = LabelsClient(runs=3)
    agent, _ = poller(tmp_path, client)
    first, second, third = sorted(client.states)
    agent.s.unlabelled.update((first, second, third))
    refused = ApiError("update_flow_run_labels", "HTTP 422: labels too long", 422)
    client.answers = [refused, NotFoundError("update_flow_run_labels", "HTTP 404", 404)]

    agent.claiming.relabel()
    assert client.label_calls == [first, second, third]
    assert sorted(client.labelled) == [third]
    assert agent.s.unlabelled == set()
    assert f"flow run {first}: could not label it, giving up: " in caplog.text
    assert "labels too long" in caplog.text
    assert second not in caplog.text  # a deleted run: nothing to say
