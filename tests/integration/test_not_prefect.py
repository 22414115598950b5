"""An API URL that reaches something other than Prefect (issue 11, item 5): a real poller
and worker pointed at a loopback server that answers 200 with an HTML page, then with
JSON of another shape, stay up, print no traceback, say it at most once a minute and
name it in /api/health; a pool name the real server refuses stops the poller with 78."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import requests

from agent.core.spec import JobSpec, dumps
from agent.spool.moves import CUR, Spool
from tests.integration.conftest import Agent
from tests.integration.fakeapi import NotPrefect
from tests.integration.harness import free_port, wait_for

NOT_PREFECT = "does not look like a Prefect API"


def _named(address: str, words: str) -> bool:
    """Health is up and its api reason holds ``words``."""
    try:
        early = requests.get(f"{address}/api/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False  # not serving yet
    if early:
        return False  # serving before its first round has met the API (CI saw it once)
    return words in str(_health(address).get("api"))


def _health(address: str) -> dict[str, object]:
    body = requests.get(f"{address}/api/health", timeout=5)
    assert body.status_code == 503, body.text
    reasons = body.json()["reasons"]
    assert isinstance(reasons, dict)
    return reasons


def test_an_api_url_that_is_not_prefect_is_an_error_in_health_not_a_crash(
    agent: Agent, tmp_path: Path
) -> None:
    spool = Spool(agent.spool)
    spool.ensure()
    run_id = str(uuid.uuid4())  # a claimed run waiting: the worker takes it and asks the API
    spool.write_ahead(run_id, dumps(JobSpec(run_id, agent.pool, "claim-1", "agent")))
    spool.publish(run_id)
    address = f"http://127.0.0.1:{free_port()}"
    with NotPrefect() as fake:
        env = {"PREFECT_API_URL": fake.url, "AGENT_LOG_LEVEL": "INFO"}
        poller = agent.procs.start(
            "poller", ["agent", "local", "start", "--agent-address", address], env
        )
        worker = agent.procs.start("worker", ["agent", "worker", "--worker-id", "w1"], env)

        # An HTML page (a captive portal, the wrong port): health names it at once.
        wait_for(lambda: _named(address, NOT_PREFECT), 60, "health to name the API")
        html = _health(address)["api"]
        assert isinstance(html, str)
        assert html.endswith(f"{fake.url} {NOT_PREFECT}: got text/html; claiming nothing"), html
        wait_for(lambda: spool.run_ids(CUR) == [run_id], 30, "the worker to take the run")

        # JSON of another shape (a list where an object is expected).
        fake.serve("application/json", [{"not": "prefect"}])
        wait_for(lambda: _named(address, "got a list"), 30, "the JSON reason")
        shape = _health(address)["api"]
        assert str(shape).startswith(f"{fake.url} {NOT_PREFECT}: "), shape
        time.sleep(8)  # rounds go on: each fails the same way

        assert poller.poll() is None and worker.poll() is None  # both still up
        asked = fake.requests
        wait_for(lambda: fake.requests > asked, 15, "the poller to keep asking")
    log, worker_log = agent.procs.log("poller"), agent.procs.log("worker")
    assert "Traceback" not in log + worker_log
    # Once a minute at most: the test lasts well under a minute.
    said = [line for line in log.splitlines() if NOT_PREFECT in line]
    assert len(said) == 1, said
    assert " ERROR " in said[0] and "said at most once a minute" in said[0]
    assert spool.run_ids(CUR) == [run_id]  # the run waits for a real API, nothing lost


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (
            "prefect-reserved",
            "work pool 'prefect-reserved' is refused by the server: create_work_pool: HTTP 403",
        ),
        # The server would take ".." and then answer 404 to every call by its path
        # (/work_pools/.. is /work_pools/), and "." with 405: refused before any call.
        ("..", "work pool name '..' (--pool) cannot be used in the API's URLs"),
        (".", "work pool name '.' (--pool) cannot be used in the API's URLs"),
    ],
    ids=["reserved", "dot-dot", "dot"],
)
def test_a_pool_name_the_server_refuses_exits_78_naming_the_pool(
    agent: Agent, pool: str, message: str
) -> None:
    proc = agent.procs.start(
        "poller", ["agent", "local", "start", "--pool", pool], {"AGENT_LOG_LEVEL": "INFO"}
    )
    assert proc.wait(timeout=60) == 78
    log = agent.procs.log("poller")
    assert f"Error: {message}" in log, log
    assert "Traceback" not in log
