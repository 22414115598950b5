"""A claim never rests on a stale poll: Prefect accepts Pending over a Completed run whose
result is not persisted (it is a rerun), so a run another agent claimed, ran and finished
after this poller's poll was answered must not be claimed again. A real Poller on a real
spool; a fake API whose fresh read says the run is over."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.settings import defaults
from agent.spool.moves import NEW
from tests.unit.test_labels_retry import LabelsClient, poller


class FinishedElsewhere(LabelsClient):
    """The poll says Scheduled; a read afterwards says what another agent made of it."""

    def __init__(self, now: str) -> None:
        super().__init__(runs=1)
        self.now = now
        self.reads = 0

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_flow_run":
            self.reads += 1
            run_id = path.split("/")[2]
            return {"id": run_id, "name": "tidy-otter", "state": {"type": self.now, "name": "x"}}
        return super().request(call, method, path, json, deadline)

    def claims(self) -> int:
        return sum(1 for s in self.states.values() if s["type"] == "PENDING")


def test_a_run_finished_elsewhere_since_a_slow_poll_is_not_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent")
    monkeypatch.setattr(defaults, "CLAIM_FRESH_SECONDS", -1.0)  # every poll counts as old
    client = FinishedElsewhere("COMPLETED")
    agent, spool = poller(tmp_path, client)
    (run_id,) = client.states

    agent.tick()
    assert client.reads == 1
    assert client.claims() == 0 and spool.run_ids(NEW) == []
    assert f"flow run {run_id}: no longer waiting (x); not claimed" in caplog.text


def test_a_run_still_scheduled_on_a_fresh_read_is_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "CLAIM_FRESH_SECONDS", -1.0)
    client = FinishedElsewhere("SCHEDULED")
    agent, spool = poller(tmp_path, client)
    (run_id,) = client.states

    agent.tick()
    assert client.reads == 1
    assert spool.run_ids(NEW) == [run_id]


def test_a_poll_answered_a_moment_ago_is_trusted_without_a_read(tmp_path: Path) -> None:
    client = FinishedElsewhere("SCHEDULED")
    agent, spool = poller(tmp_path, client)
    agent.tick()
    assert client.reads == 0  # no extra request per claim on a server that answers fast
    assert len(spool.run_ids(NEW)) == 1
