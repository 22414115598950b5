"""GET /api/health under real faults: each makes it answer 503 naming the failing check
and why, and it answers 200 again once the fault is gone.

    workers  supervisorctl stops every worker process
    poll     the Prefect API goes away (its server is killed), or the credential is wrong
    spool    the spool's filesystem is remounted read-only
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.spool.moves import STATE_DIRS
from examples import demo
from tests.integration.conftest import OWN_AUTH, Agent, executions
from tests.integration.harness import PrefectServer, free_port, remount, tmpfs, wait_for

Body = dict[str, Any]


def get_health(address: str, verbose: bool = False) -> tuple[int, Body]:
    # A short timeout: the handler never calls the API, so it answers at once whatever
    # the API is doing.
    response = requests.get(f"{address}/api/health{'?verbose' if verbose else ''}", timeout=3)
    body: Body = response.json()
    assert body["healthy"] is (response.status_code == 200), (response.status_code, body)
    return response.status_code, body


def serving(address: str, timeout: float = 20) -> None:
    """Wait for a just-started poller to listen (a refused connection is only allowed here)."""

    def up() -> bool:
        try:
            requests.get(f"{address}/api/health", timeout=3)
        except requests.ConnectionError:
            return False
        return True

    wait_for(up, timeout, f"the poller to serve {address}")


def wait_health(
    address: str,
    status: int,
    timeout: float,
    what: str,
    verbose: bool = False,
    check: Callable[[Body], bool] = lambda body: True,
    latencies: list[float] | None = None,
) -> Body:
    """Poll /api/health until it answers ``status`` with a body that passes ``check``;
    any failure to answer fails at once."""
    deadline = time.monotonic() + timeout
    seen: tuple[int, Body] | None = None
    while True:
        asked = time.monotonic()
        seen = get_health(address, verbose)
        if latencies is not None:
            latencies.append(time.monotonic() - asked)
        if seen[0] == status and check(seen[1]):
            return seen[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last {seen}")
        time.sleep(0.25)


def poke(address: str) -> None:
    response = requests.get(f"{address}/api/poke", timeout=3)
    assert response.status_code == 200, response.text
    assert response.json() == {"poked": True}


def polls(address: str) -> float:
    """The poller's agent_polls_total (successful polls) from its /metrics."""
    text = requests.get(f"{address}/metrics", timeout=3).text
    match = re.search(r"^agent_polls_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


# -- workers -----------------------------------------------------------------------------


def test_health_503_when_no_worker_is_alive_and_200_again(agent: Agent) -> None:
    sup = agent.supervisor(workers=2)
    address = agent.env["AGENT_ADDRESS"]
    assert sup.ctl("start", "agent").returncode == 0
    serving(address)
    body = wait_health(address, 200, 40, "a healthy agent")
    assert body == {
        "healthy": True,
        "reasons": {},
        "checks": {
            "api": True,
            "poll": True,
            "workers": True,
            "spool": True,
            "containment": True,
            "events": True,
        },
    }

    result = sup.ctl("stop", "agent-worker:*")
    assert result.returncode == 0, result.stdout + result.stderr
    status = sup.status()
    assert status["agent"] == "RUNNING", status
    assert status["agent-worker:agent-worker_00"] == "STOPPED", status

    body = wait_health(address, 503, 15, "503 with no worker alive")
    assert body["checks"] == {
        "api": True,
        "poll": True,
        "workers": False,
        "spool": True,
        "containment": True,
        "events": True,
    }
    assert list(body["reasons"]) == ["workers"]
    # Stopped cleanly, the workers left no entries: none is live, none is dead.
    assert body["reasons"]["workers"] == "no live worker process (0 dead)"
    _, verbose = get_health(address, verbose=True)
    assert verbose["checks"]["workers"] == {
        "ok": False,
        "reason": "no live worker process (0 dead)",
        "idle": 0,
        "busy": 0,
        "backoff": 0,
        "dead": 0,
    }

    result = sup.ctl("start", "agent-worker:*")
    assert result.returncode == 0, result.stdout + result.stderr
    body = wait_health(address, 200, 20, "200 once the workers are back")
    assert body["reasons"] == {}
    _, verbose = get_health(address, verbose=True)
    assert verbose["checks"]["workers"]["idle"] == 2


# -- poll: the API down, a wrong credential --------------------------------------------


def test_health_503_while_the_api_is_down_then_200(agent: Agent, own_server: PrefectServer) -> None:
    # A poller whose auth string is wrong, against the session server (which stays up):
    # 401 is not retried, so every poll fails at once, and it says why from the first.
    wrong = f"http://127.0.0.1:{free_port()}"
    wrong_env = {"PREFECT_API_AUTH_STRING": "admin:not-the-auth-string"}
    agent.start_worker(name="wrong-worker", spool=agent.tmp / "wrong-spool", env=wrong_env)
    agent.start_poller(
        name="wrong-poller",
        spool=agent.tmp / "wrong-spool",
        env={**wrong_env, "AGENT_ADDRESS": wrong},
    )
    wrong_started = time.monotonic()
    serving(wrong)
    body = wait_health(
        wrong,
        200,
        20,
        "the wrong credential as the poll's last error",
        verbose=True,
        check=lambda b: bool(b["checks"]["poll"]["last_error"]) and b["checks"]["workers"]["ok"],
    )
    assert "the API key or auth string is wrong" in body["checks"]["poll"]["last_error"]
    assert "HTTP 401" in body["checks"]["poll"]["last_error"]
    assert body["checks"]["poll"]["ok"] is True  # not yet: failures count after 30 s
    assert "not-the-auth-string" not in agent.procs.log("wrong-poller")

    url = own_server.start()
    address = f"http://127.0.0.1:{free_port()}"
    own = {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": OWN_AUTH}
    agent.start_worker(env=own)
    agent.start_poller(env={**own, "AGENT_ADDRESS": address})
    serving(address)
    body = wait_health(
        address,
        200,
        30,
        "a healthy agent that has polled",
        verbose=True,
        check=lambda b: b["checks"]["poll"]["last_successful_poll_age_seconds"] is not None,
    )
    assert body["reasons"] == {}

    # /api/poke wakes a sleeping poller: once it sleeps its 8 or 10 s (idle back-off),
    # a poke makes it poll within a second or two.
    wait_health(
        address,
        200,
        30,
        "the idle poller to back off",
        verbose=True,
        check=lambda b: b["checks"]["poll"]["last_successful_poll_age_seconds"] >= 5,
    )
    poke(address)
    wait_health(
        address,
        200,
        2,
        "a poll right after the poke",
        verbose=True,
        check=lambda b: b["checks"]["poll"]["last_successful_poll_age_seconds"] < 2,
    )

    own_server.stop()
    stopped = time.monotonic()
    latencies: list[float] = []
    body = wait_health(
        address,
        503,
        45,
        "503 naming the unreachable API",
        check=lambda b: "cannot reach" in b["reasons"].get("poll", ""),
        latencies=latencies,
    )
    down_for = time.monotonic() - stopped
    # The limit is max(3 x 10 s, 30 s) since the last success; the last success was at
    # most one 10 s interval before the stop, so no 503 before about 20 s.
    assert 15 < down_for < 45, down_for
    # The api check names the outage as soon as a round's calls have retried in vain.
    assert list(body["reasons"]) == ["api", "poll"]
    # ... "cannot reach <url>: cannot connect to 127.0.0.1:<port>: connection refused"
    unreachable = rf"cannot reach {url}(: .+)?"
    assert re.fullmatch(
        rf"the Prefect API has been unavailable for \d+s, claiming nothing: .*{unreachable}",
        body["reasons"]["api"],
    )
    reason = body["reasons"]["poll"]
    assert re.fullmatch(rf"no successful poll for \d+s \(limit 30s\): .*{unreachable}", reason)
    assert body["checks"] == {
        "api": False,
        "poll": False,
        "workers": True,
        "spool": True,
        "containment": True,
        "events": True,
    }
    # It kept answering, and fast, all the while the API was down.
    assert max(latencies) < 1.0, max(latencies)
    assert len(latencies) > 20

    # Back on the same port, with the same database: 200 within seconds, with no poke
    # (the poller probes the API every second while it is away).
    own_server.start()
    back = time.monotonic()
    body = wait_health(address, 200, 15, "200 once the API is back")
    assert body["reasons"] == {}
    _, verbose = get_health(address, verbose=True)
    assert verbose["checks"]["poll"]["last_error"] is None
    assert time.monotonic() - back < 15

    # The wrong credential, by now past the limit: 503, and the reason says which it is.
    wait_for(lambda: time.monotonic() - wrong_started > 31, 60, "the wrong poller's limit")
    status, body = get_health(wrong)
    assert status == 503, body
    assert re.fullmatch(
        r"no successful poll since the agent started \d+s \(limit 30s\): "
        r".*HTTP 401, the API key or auth string is wrong.*",
        body["reasons"]["poll"],
    ), body
    assert list(body["reasons"]) == ["poll"]


# -- spool: a read-only filesystem -------------------------------------------------------


@pytest.fixture
def spoolfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs of the test's own, unmounted at teardown (lazily if still busy).
    Request it before ``agent``, so that the agent's processes are gone by then."""
    with tmpfs(tmp_path / "spoolfs", "16m") as path:
        yield path


def test_health_503_when_the_spool_is_read_only_then_200(
    spoolfs: Path, agent: Agent, marker: Path
) -> None:
    spool = spoolfs / "spool"
    spool.mkdir(mode=0o700)
    # Linux refuses `remount,ro` (EBUSY) while any file on the filesystem is open for
    # writing, and every agent process holds its lock file (poller.lock, workers/<id>.lock)
    # open O_RDWR for life. A disk that fails into read-only (errors=remount-ro) is not
    # asked; this test has to ask, so the lock files live on another filesystem. All that
    # the poller writes (tmp/, new/, poller.json) is on the tmpfs.
    locks = agent.tmp / "spool-locks"
    (locks / "workers").mkdir(parents=True)
    (spool / "workers").symlink_to(locks / "workers")
    (spool / "poller.lock").symlink_to(locks / "poller.lock")

    address = f"http://127.0.0.1:{free_port()}"
    agent.start_worker(spool=spool)
    agent.start_poller(spool=spool, env={"AGENT_ADDRESS": address})
    serving(address)
    body = wait_health(address, 200, 30, "a healthy agent")
    deployment = agent.deploy("record")

    remount(spoolfs, "ro")
    body = wait_health(address, 503, 5, "503 for the read-only spool")
    assert list(body["reasons"]) == ["spool"]
    assert body["checks"] == {
        "api": True,
        "poll": True,
        "workers": True,
        "spool": False,
        "containment": True,
        "events": True,
    }
    assert body["reasons"]["spool"].startswith(f"spool {spool}: ")
    # From the next tick on, the write probe's own words.
    poke(address)
    body = wait_health(
        address,
        503,
        15,
        "the probe's error",
        check=lambda b: "Read-only file system" in b["reasons"]["spool"],
    )
    assert body["reasons"]["spool"] == f"spool {spool}: cannot write: Read-only file system"

    # A due run is seen by every poll and claimed by none while the spool is read-only.
    run_id = agent.run(deployment, {"marker": str(marker)})
    before = polls(address)
    for _ in range(3):
        poke(address)
        time.sleep(0.5)
    wait_for(lambda: polls(address) >= before + 3, 30, "three polls after the run was created")
    assert demo.read_run(agent.client, run_id)["state"]["type"] == "SCHEDULED"
    # No spec written, half-written or left: tmp/ (and every other state folder) is empty.
    assert {d: os.listdir(spool / d) for d in STATE_DIRS} == {d: [] for d in STATE_DIRS}
    assert get_health(address)[0] == 503
    assert "claiming nothing until it is writable" in agent.procs.log("poller")

    remount(spoolfs, "rw")
    poke(address)
    body = wait_health(address, 200, 15, "200 once the spool is writable")
    assert body["reasons"] == {}
    assert agent.wait([run_id], timeout=90)[run_id]["type"] == "COMPLETED"
    assert executions(marker) == [run_id]
    assert "is writable again" in agent.procs.log("poller")
