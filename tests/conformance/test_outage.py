"""The Prefect server stopped for a minute in the middle of a burst, at the instant a
worker has just launched a flow's engine (which has not reached the API yet, so it fails
to load its run and exits while the run is still Pending). Afterwards every run is
Completed, executed exactly once, that one included (a process that exits while its run
is Pending is started again, not crashed), and the agent claims again within 2 s of the
server's return.

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
RUNS = 6  # due now: four run, then two start as the server goes away
LATER = 3  # due as the outage ends: there is something to claim, and free workers, at its end
PAUSE = 6.0
FIRST_CLAIM_WITHIN = 2.0


def engines(tag: str) -> dict[int, str]:
    """This test's live flow engines (`python -m prefect.engine`): pid -> flow run id."""
    found = {}
    for pid in tagged_pids(tag):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect.engine" not in cmdline:
            continue
        for entry in environ:
            if entry.startswith(b"PREFECT__FLOW_RUN_ID="):
                found[pid] = entry.split(b"=", 1)[1].decode()
    return found


def newest_engine(tag: str, known: set[int]) -> tuple[int, str] | None:
    """An engine that was not running at the last look, launched under half a second ago
    (its interpreter is still importing prefect: it has not called the API)."""
    ticks = 100  # os.sysconf("SC_CLK_TCK") on Linux
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    for pid, run_id in engines(tag).items():
        if pid in known:
            continue
        known.add(pid)
        try:
            started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        if uptime - started / ticks < 0.5:
            return pid, run_id
    return None


def test_server_away_a_minute_mid_burst_every_run_completes_once_and_claims_resume_in_2s(
    world: World, own_server: PrefectServer
) -> None:
    url = own_server.start()
    world = dataclasses.replace(
        world,
        api=Api(url, OWN_AUTH),
        env={"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": OWN_AUTH},
    )
    world.start(workers=WORKERS)
    pool = f"/work_pools/{world.pool}"
    wait_for(lambda: world.api.status("GET", pool) == 200, 60, "the poller to make its pool")
    deployment = world.deploy("conformance_sleep")
    run_ids = [world.run(deployment, {"pause": PAUSE}) for _ in range(RUNS)]
    world.poke()
    tag = world.agent.procs.tag

    # Once the first runs are done, wait for a worker to launch the next engine; then
    # add runs due as the outage ends, and take the server away at once.
    wait_for(lambda: sum(e.event == "end" for e in world.events()) >= 2, 180, "two runs done")
    known = set(engines(tag))
    found: tuple[int, str] | None = None
    deadline = time.monotonic() + 120
    while found is None and time.monotonic() < deadline:
        found = newest_engine(tag, known)
        time.sleep(0.02)
    assert found is not None, "no engine was launched"
    engine_pid, caught = found
    # Due 10 s after the outage ends: within the agent's 10 s prefetch once the server has
    # started again (however long that takes), and never 15 s overdue (Prefect's "Late")
    # unless the server takes over 25 s to start.
    due = datetime.now(UTC) + timedelta(seconds=OUTAGE_SECONDS + 10)
    later = [world.run(deployment, {"pause": PAUSE}, scheduled=due) for _ in range(LATER)]
    own_server.stop()
    down_at = time.time()
    print(f"server stopped as flow run {caught}'s engine (pid {engine_pid}) had just started")
    while time.time() - down_at < OUTAGE_SECONDS:
        time.sleep(1)

    own_server.start()  # same port, same database; returns once /health answers
    back = time.time()
    everything = run_ids + later
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
