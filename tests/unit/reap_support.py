"""Shared by the reap unit tests (test_reap_rules, test_reap_duty): this agent and the
one whose host is lost, how long silent and how old a run's state is, and the labels a
claim puts on a run."""

from __future__ import annotations

from agent.core.claim import HOST_LABEL, WORKER_LABEL

REAP_AFTER = 600.0
ME = ("host-b", "h2")  # this agent: its name and its host
THEM = ("host-a", "h1")  # the agent whose host is lost
SILENT = 3600.0  # well past REAP_AFTER
OLD = 3600.0  # a run's state this many seconds old


def labels(agent: str | None = THEM[0], host: str | None = THEM[1]) -> dict[str, str]:
    found = {"prefect.flow.id": "f1"}
    if agent is not None:
        found[WORKER_LABEL] = agent
    if host is not None:
        found[HOST_LABEL] = host
    return found
