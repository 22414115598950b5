"""The Prefect server stopped for a minute in the middle of a burst, at the instant a
worker has just launched a flow's engine (which has not reached the API yet, so it fails
to load its run and exits while the run is still Pending). Afterwards every run is
Completed, executed exactly once, that one included (a process that exits while its run
is Pending is started again, not crashed), and the agent claims again within 2 s of the
server's return.

The burst, on four workers: a long run whose flow is mid-sleep when the server goes (it
finishes during the outage; its engine reports Completed once the server is back), two
short runs done before, the run whose engine is caught starting, and two runs due just
after the outage, which the two idle workers claim as soon as the server answers.

The test stops and starts a server of its own (same port, same database), as
tests/integration/test_outage.py does: stopping the session's would fail other tests.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conformance.support import RAN, Api, World, api_time
from tests.conftest import OWN_AUTH
from tests.integration.harness import PrefectServer, tagged_pids, wait_for

pytestmark = pytest.mark.conformance

OUTAGE_SECONDS = 60
WORKERS = 4
LONG = 30.0  # mid-sleep at the stop, done during the outage
SHORT = 4.0
LATER = 2  # one per idle worker: claimed at once when the server is back
# Those are due this long after the stop: 12 s after the outage, so within the agent's
# 10 s prefetch as soon as the server answers if it takes 2 s or more to start (it takes
# 6 s or more), and never 15 s overdue (Prefect's "Late") unless it takes over 27 s.
DUE_AFTER_STOP = OUTAGE_SECONDS + 12
FIRST_CLAIM_WITHIN = 2.0
WARM = b"local-agent warm"  # agent/worker/forkserver.py MARKER


def engines(tag: str) -> dict[int, str]:
    """This test's live flow engines: pid -> flow run id. A cold one is `python -m
    prefect.engine`; a warm one (forked, with the warm process's command line) is the
    child of its shim, which carries the same run id (the shim's parent does not)."""
    seen: dict[int, tuple[bytes, int, str]] = {}
    for pid in tagged_pids(tag):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        run = next(
            (
                e.split(b"=", 1)[1].decode()
                for e in environ
                if e.startswith(b"PREFECT__FLOW_RUN_ID=")
            ),
            "",
        )
        seen[pid] = (cmdline, ppid, run)
    found = {}
    for pid, (cmdline, ppid, run) in seen.items():
        if not run or not run.strip("0"):
            continue  # the warm process's placeholder
        parent_run = seen.get(ppid, (b"", 0, ""))[2]
        if b"prefect.engine" in cmdline.split(b"\0") or (WARM in cmdline and parent_run == run):
            found[pid] = run
    return found


def caught_starting(tag: str, run_id: str, timeout: float) -> int:
    """Wait for the engine of ``run_id`` to be launched and return its pid while it is
    under half a second old (its interpreter still importing prefect: it has not called
    the API yet)."""
    ticks = 100  # os.sysconf("SC_CLK_TCK") on Linux
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, of in engines(tag).items():
            if of != run_id:
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                uptime = float(Path("/proc/uptime").read_text().split()[0])
            except OSError:
                continue
            age = uptime - int(stat.rsplit(")", 1)[1].split()[19]) / ticks
            assert age < 0.5, f"flow run {run_id}'s engine was {age:.2f}s old when seen"
            return pid
        time.sleep(0.02)
    raise AssertionError(f"flow run {run_id}'s engine was not launched in {timeout:.0f}s")


def test_server_away_a_minute_mid_burst_every_run_completes_once_and_claims_resume_in_2s(
    world: World, own_server: PrefectServer
) -> None:
    url = own_server.start()
    # Cold launches: the window this test aims at (an engine launched but not yet at the
    # API) is its interpreter's start, over a second; a warm fork reaches the API within
    # milliseconds, too fast to stop the server in between every time.
    world = dataclasses.replace(
        world,
        api=Api(url, OWN_AUTH),
        env={"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": OWN_AUTH, "AGENT_LAUNCH": "cold"},
    )
    world.start(workers=WORKERS)
    pool = f"/work_pools/{world.pool}"
    wait_for(lambda: world.api.status("GET", pool) == 200, 60, "the poller to make its pool")
    deployment = world.deploy("conformance_sleep")
    long_run = world.run(deployment, {"pause": LONG})
    shorts = [world.run(deployment, {"pause": SHORT}) for _ in range(2)]
    world.poke()
    world.api.wait_final(shorts, 120)
    for run_id in shorts:
        world.settled(run_id)  # their workers are free again
    assert world.api.flow_run(long_run)["state"]["type"] == "RUNNING"

    # One more run; the instant a worker launches its engine, the server goes away.
    caught = world.run(deployment, {"pause": SHORT})
    world.poke()
    engine_pid = caught_starting(world.agent.procs.tag, caught, 60)
    due = datetime.now(UTC) + timedelta(seconds=DUE_AFTER_STOP)
    later = [world.run(deployment, {"pause": SHORT}, scheduled=due) for _ in range(LATER)]
    own_server.stop()
    down_at = time.time()
    print(f"server stopped as flow run {caught}'s engine (pid {engine_pid}) had just started")
    assert [e.event for e in world.events(long_run)] == ["start"]  # mid-sleep
    while time.time() - down_at < OUTAGE_SECONDS:
        time.sleep(1)

    own_server.start()  # same port, same database; returns once /health answers
    back = time.time()
    everything = [long_run, *shorts, caught, *later]
    states = world.api.wait_final(everything, 240)

    # The first claim after the outage: the earliest Pending written since the stop.
    claims = [
        api_time(s["timestamp"])
        for run_id in everything
        for s in world.api.states(run_id)
        if s["type"] == "PENDING" and api_time(s["timestamp"]) > down_at
    ]
    first_claim = min(claims) - back if claims else float("inf")
    print(f"first claim {first_claim:.2f}s after the server answered /health again")

    problems = []
    for run_id in everything:
        history = world.history(run_id)
        executions = len(world.starts(run_id))
        if history != RAN or executions != 1:
            problems.append(f"{run_id}: executed {executions} times, history {history}")
    if first_claim > FIRST_CLAIM_WITHIN:
        problems.append(f"first claim {first_claim:.1f}s after the return")
    assert not problems, "\n".join(problems)
    assert {rid: s["type"] for rid, s in states.items()} == dict.fromkeys(everything, "COMPLETED")
    # The caught run's first engine never reached the API: it ran only after the return.
    running = next(s for s in world.api.states(caught) if s["type"] == "RUNNING")
    assert api_time(running["timestamp"]) > back - 1, (caught, running)
