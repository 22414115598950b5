"""A full disk under a real agent's spool (a 1 MB tmpfs of the test's own, filled by a
file written until ENOSPC) while flow runs are due: health answers 503 saying there is
no space, nothing is claimed or written, and no agent process exits; once the file is
deleted the agent recovers by itself, without a poke or a restart, and each run is
claimed and executed exactly once.

Everything of the agent's is on the tmpfs: specs, worker registry and lock files,
poller.lock and poller.json (unlike the read-only test in test_health.py, nothing has to
move off it: a full disk does not mind files held open for writing). A disk filling up
with a run in flight (a note that cannot be written, a publish that fails) is covered
with an injected ENOSPC in tests/unit/test_spool_enospc_*.py.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.spool.moves import CUR, DONE, FAILED, NEW, STATE_DIRS, TMP
from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import free_port, tmpfs, wait_for
from tests.integration.test_health import get_health, poke, polls, serving, wait_health

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
PAGE = b"\0" * 4096


@pytest.fixture
def tinyfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs, unmounted at teardown. Requested before ``agent``, so that the
    agent's processes are gone by then."""
    with tmpfs(tmp_path / "tinyfs", "1m") as path:
        yield path


def fill(filler: Path) -> int:
    """Append to ``filler`` until the filesystem has no room left; the bytes it took."""
    taken = 0
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                taken += os.write(fd, PAGE)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return taken
    finally:
        os.close(fd)


def fill_up(fs: Path, filler: Path, address: str) -> None:
    """Fill ``fs`` for good. The poller replaces poller.json each tick (a new page, then
    the old one freed): one replace in flight while filling frees a page afterwards. So
    fill again after a tick until a fill finds no room; from then on every write fails,
    poller.json's included, and nothing frees a page."""
    fill(filler)
    for _ in range(10):
        poke(address)
        time.sleep(0.5)
        if fill(filler) == 0 and os.statvfs(fs).f_bavail == 0:
            return
    raise AssertionError(f"{fs} does not stay full")


def listing(spool: Path) -> dict[str, list[str]]:
    """Every name in each state folder, dot-files included, but for the write probe's
    own file (created and removed within one tick)."""
    return {
        state: sorted(n for n in os.listdir(spool / state) if not n.startswith(".probe."))
        for state in STATE_DIRS
    }


def alive(agent: Agent) -> list[int | None]:
    return [proc.poll() for proc in agent.procs.popens]


def test_a_full_spool_claims_nothing_and_everything_resumes_when_space_returns(
    tinyfs: Path, agent: Agent, marker: Path
) -> None:
    spool = tinyfs / "spool"
    address = f"http://127.0.0.1:{free_port()}"
    agent.start_worker(name="w1", spool=spool)
    agent.start_worker(name="w2", spool=spool)
    agent.start_poller(spool=spool, env={"AGENT_ADDRESS": address})
    serving(address)
    wait_health(
        address,
        200,
        30,
        "a healthy agent with both workers idle",
        verbose=True,
        check=lambda b: b["checks"]["workers"]["idle"] == 2,
    )
    deployment = agent.deploy("record")

    # The disk fills up.
    filler = tinyfs / "filler"
    fill_up(tinyfs, filler, address)
    body = wait_health(
        address,
        503,
        15,
        "503 for the full spool",
        check=lambda b: NO_SPACE in (b["reasons"].get("spool") or ""),
    )
    # What the user sees: the spool, and that there is no space left on it.
    assert body["reasons"] == {"spool": f"spool {spool}: cannot write: {NO_SPACE}"}
    assert body["checks"]["spool"] is False

    # Runs fall due; every poll sees them and none is claimed.
    run_ids = [agent.run(deployment, {"marker": str(marker)}) for _ in range(2)]
    before = polls(address)
    for _ in range(3):
        poke(address)
        time.sleep(0.5)
    wait_for(lambda: polls(address) >= before + 3, 30, "three polls after the runs were due")
    for run_id in run_ids:
        assert demo.read_run(agent.client, run_id)["state"]["type"] == "SCHEDULED", run_id
    # No spec anywhere: none written ahead, none half-written, none published or taken.
    assert listing(spool) == {state: [] for state in STATE_DIRS}
    status, body = get_health(address, verbose=True)
    assert status == 503
    assert body["checks"]["spool"]["depth"] == {"waiting": 0, "running": 0}
    assert body["checks"]["workers"]["idle"] == 2  # the workers live on, idle
    assert os.statvfs(tinyfs).f_bavail == 0, "the test's premise: the disk stayed full"
    assert alive(agent) == [None, None, None]
    log = agent.procs.log("poller")
    assert f"cannot write: {NO_SPACE}: claiming nothing until it is writable" in log

    # Space returns: no poke, no restart. The sleeping poller probes a spool it could not
    # write to every second, so it notices well before its next idle poll (up to 30 s
    # apart with the events stream connected); 15 s is margin for a loaded machine.
    filler.unlink()
    freed = time.monotonic()
    wait_health(address, 200, 15, "200 once there is space again")
    recovered_in = time.monotonic() - freed
    finals = agent.wait(run_ids, timeout=120)
    assert {run_id: finals[run_id]["type"] for run_id in run_ids} == dict.fromkeys(
        run_ids, "COMPLETED"
    )
    # Each executed once, and claimed once (a single Pending in its history).
    assert sorted(executions(marker)) == sorted(run_ids)
    for run_id in run_ids:
        assert agent.states(run_id).count("PENDING") == 1, agent.states(run_id)
    # Retired where they belong, with their outcome; nothing left in flight.
    wait_for(lambda: len(listing(spool)[DONE]) == 4, 15, "both specs in done/")
    names = listing(spool)
    assert names[DONE] == sorted(n for r in run_ids for n in (f"{r}.json", f"{r}.outcome"))
    assert names[TMP] == names[NEW] == names[CUR] == names[FAILED] == []
    for run_id in run_ids:
        outcome = json.loads((spool / DONE / f"{run_id}.outcome").read_bytes())
        assert outcome["outcome"] == "completed"
    assert "is writable again" in agent.procs.log("poller")
    assert alive(agent) == [None, None, None]
    print(f"recovered {recovered_in:.1f}s after the space returned")
