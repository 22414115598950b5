"""Integration tests: their fixtures (the session's Prefect server, the per-test agent
world, `own_server`, `marker`) live in tests/conftest.py, shared with the conformance
suite so that one Prefect server serves both in one session. The names tests import from
here are re-exported; fixture functions are deliberately not (imported here they would be
registered a second time, and a second session server started for this directory)."""

from __future__ import annotations

from tests.conftest import AUTH, FLOWS_DIR, OWN_AUTH, Agent, Factory, executions

__all__ = ["AUTH", "FLOWS_DIR", "OWN_AUTH", "Agent", "Factory", "executions"]
