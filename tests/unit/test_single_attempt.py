"""The client's part in an API outage: `PrefectClient.single_attempt()` makes each
call one attempt, without retries, and restores the retries after, even when its
block raises. A real client whose transport fails a set number of times."""

from __future__ import annotations

from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.errors import TransientApiError
from agent.settings.config import ApiSettings
from tests.unit.outage_support import URL

# -- the client's part ----------------------------------------------------------------------


class FlakyClient(PrefectClient):
    """A real client whose transport fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.sleeps: list[float] = []
        super().__init__(ApiSettings(url=URL), sleep=self.sleeps.append)
        self.failures = failures
        self.attempts = 0

    def _once(self, call: str, method: str, path: str, json: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientApiError(call, f"cannot reach {URL}")
        return {"ok": True}


def test_single_attempt_makes_one_attempt_and_retries_resume_after() -> None:
    client = FlakyClient(failures=1)
    with client.single_attempt(), pytest.raises(TransientApiError):
        client.request("read_flow_run", "GET", "/flow_runs/r1")
    assert (client.attempts, client.sleeps) == (1, [])
    assert client._single_attempt is False

    client = FlakyClient(failures=1)
    assert client.request("read_flow_run", "GET", "/flow_runs/r1") == {"ok": True}
    assert client.attempts == 2 and len(client.sleeps) == 1

    client = FlakyClient(failures=1)
    with client.single_attempt(False):
        assert client.request("read_flow_run", "GET", "/flow_runs/r1") == {"ok": True}
    assert client.attempts == 2


def test_single_attempt_is_restored_when_the_block_raises() -> None:
    client = FlakyClient(failures=0)
    with pytest.raises(RuntimeError), client.single_attempt():
        assert client._single_attempt is True
        raise RuntimeError("boom")
    assert client._single_attempt is False
