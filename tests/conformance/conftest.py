"""Conformance fixtures. The Prefect server and the per-test agent world (pool, spool,
processes killed by pid at teardown) are tests/conftest.py's, shared with the integration
suite: one server serves both in a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.support import Api, World
from tests.conftest import AUTH, Agent


@pytest.fixture
def api(server_url: str) -> Api:
    return Api(server_url, AUTH)


@pytest.fixture
def world(agent: Agent, api: Api, tmp_path: Path) -> World:
    marker = tmp_path / "marker.txt"
    marker.touch()
    return World(agent, api, marker)
