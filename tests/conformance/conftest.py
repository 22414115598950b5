"""Conformance fixtures. The Prefect server and the per-test agent world (pool, spool,
processes killed by pid at teardown) are tests/conftest.py's, shared with the integration
suite: one server serves both in a session."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.conformance.support import Api, World
from tests.conftest import AUTH, Agent

FAILED_KEY = pytest.StashKey[bool]()
LOG_TAIL = 40


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED_KEY] = True
    return report


@pytest.fixture
def api(server_url: str) -> Api:
    return Api(server_url, AUTH)


@pytest.fixture
def world(
    request: pytest.FixtureRequest, agent: Agent, api: Api, tmp_path: Path
) -> Iterator[World]:
    marker = tmp_path / "marker.txt"
    marker.touch()
    yield World(agent, api, marker)
    if request.node.stash.get(FAILED_KEY, False):
        # What the agent said, in the report of a failed test.
        for log in sorted(agent.tmp.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
            print(f"--- last {len(lines)} lines of {log.name} ---", *lines, sep="\n")
