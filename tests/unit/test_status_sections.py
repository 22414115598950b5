"""agent/cli/status.py: the sections of the `agent status` snapshot: waiting and running
runs, workers alive or dead, runs finished in the last hour, and the poller.

Spools are built with the real Spool and Registry code; live and dead workers and
pollers are child processes holding (or having held) the real flocks.
"""

from __future__ import annotations

import os
import subprocess

from agent.cli.status import EXIT_DEGRADED, collect, exit_code
from agent.spool.moves import DONE, FAILED, Lease, Spool
from agent.worker.shim import write_status
from tests.unit.status_support import NOW, deliver, finish, kill, poller_state, start_child

# A pytest fixture, found by its name in this module: imported as itself.
from tests.unit.status_support import children as children


def refuse(spool: Spool, run_id: str, at: float) -> None:
    deliver(spool, run_id)
    lease = spool.take()
    assert lease is not None
    spool.refuse(lease, "spec is for work pool 'other'")
    os.utime(spool.dir(FAILED) / f"{run_id}.reason", (at, at))


# -- sections ------------------------------------------------------------------------


def test_waiting_lists_specs_oldest_first_with_name_claim_and_schedule(spool: Spool) -> None:
    # claimed_at comes from the spec; the file's time only when the spec has none (0)
    deliver(spool, "run-new", name="newer", claimed_at=0, mtime=NOW - 5)
    deliver(
        spool,
        "run-old",
        name="older",
        claimed_at=NOW - 120,
        scheduled_start="2023-11-14T22:10:00+00:00",
        mtime=NOW - 110,
    )
    waiting = collect(spool.root, now=NOW)["runs"]["waiting"]
    assert waiting == [
        {
            "flow_run_id": "run-old",
            "name": "older",
            "claimed_at": NOW - 120,
            "scheduled_start": "2023-11-14T22:10:00+00:00",
            "error": None,
        },
        {
            "flow_run_id": "run-new",
            "name": "newer",
            "claimed_at": NOW - 5,
            "scheduled_start": None,
            "error": None,
        },
    ]


def test_running_shows_worker_flow_pid_and_start_from_status_json(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    deliver(spool, "run-a", name="etl")
    worker = start_child(children, spool, "busy:w1")
    write_status(spool.run_dir("run-a"), {"pid": 777001, "started": NOW - 180})
    snapshot = collect(spool.root, now=NOW)
    assert snapshot["runs"]["running"] == [
        {
            "flow_run_id": "run-a",
            "name": "etl",
            "worker": "w1",
            "worker_alive": True,
            "pid": 777001,
            "since": NOW - 180,
            "returncode": None,
            "watched": True,
            "error": None,
        }
    ]
    [w1] = snapshot["workers"]
    assert w1["pid"] == worker.pid  # the worker's own pid, not the flow's
    assert (w1["state"], w1["flow_run_id"], w1["alive"]) == ("busy", "run-a", True)


def test_running_without_status_json_starts_when_the_worker_took_it(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    deliver(spool, "run-a")
    start_child(children, spool, "busy:w1")
    [run] = collect(spool.root, now=NOW)["runs"]["running"]
    [w1] = collect(spool.root, now=NOW)["workers"]
    assert run["pid"] is None
    assert run["since"] == w1["since"] is not None


def test_run_whose_worker_was_killed_is_orphaned_and_names_the_dead_worker(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    deliver(spool, "run-a")
    write_status(spool.run_dir("run-a"), {"pid": 777002, "started": NOW - 60})
    kill(start_child(children, spool, "busy:w1"))
    snapshot = collect(spool.root, now=NOW)
    [run] = snapshot["runs"]["running"]
    assert (run["worker"], run["worker_alive"], run["watched"]) == ("w1", False, False)
    [w1] = snapshot["workers"]
    assert w1["alive"] is False and w1["state"] == "dead"
    assert w1["pid"] is None  # gone; a reused pid must not be shown as its
    assert w1["flow_run_id"] == "run-a"
    assert exit_code(snapshot) == EXIT_DEGRADED


def test_run_held_only_by_its_shim_is_watched(spool: Spool, leases: list[Lease]) -> None:
    # The lease is held here (as a shim would hold it) with no worker registered.
    deliver(spool, "run-a")
    lease = spool.take()
    assert lease is not None
    leases.append(lease)
    [run] = collect(spool.root, now=NOW)["runs"]["running"]
    assert (run["watched"], run["worker"], run["worker_alive"]) == (True, None, None)
    lease.release()
    [run] = collect(spool.root, now=NOW)["runs"]["running"]
    assert run["watched"] is False


def test_workers_alive_idle_busy_and_dead(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    deliver(spool, "run-a")
    idle = start_child(children, spool, "idle:w0")
    busy = start_child(children, spool, "busy:w1")
    kill(start_child(children, spool, "idle:w2"))
    workers = collect(spool.root, now=NOW)["workers"]
    assert [(w["worker_id"], w["alive"], w["state"]) for w in workers] == [
        ("w0", True, "idle"),
        ("w1", True, "busy"),
        ("w2", False, "dead"),
    ]
    assert [w["pid"] for w in workers] == [idle.pid, busy.pid, None]
    assert [w["flow_run_id"] for w in workers] == [None, "run-a", None]
    assert all(isinstance(w["since"], float) for w in workers)


def test_finished_counts_the_last_hour_by_outcome(spool: Spool) -> None:
    finish(spool, "c1", "completed", NOW - 10)
    finish(spool, "c2", "completed", NOW - 3500)
    finish(spool, "f1", "failed", NOW - 100)
    finish(spool, "x1", "crashed", NOW - 200)
    finish(spool, "k1", "cancelled", NOW - 300)
    refuse(spool, "r1", NOW - 400)
    # older than an hour: not counted
    finish(spool, "c-old", "completed", NOW - 3700)
    finish(spool, "f-old", "failed", NOW - 86400 * 30)
    refuse(spool, "r-old", NOW - 3601)
    # "at" decides, even when the note's file is recent (copied spool, touched file)
    finish(spool, "c-touched", "completed", NOW - 4000)
    os.utime(spool.dir(DONE) / "c-touched.outcome", (NOW, NOW))
    counts = collect(spool.root, now=NOW)["runs"]["finished_last_hour"]
    assert counts == {
        "completed": 2,
        "failed": 1,
        "crashed": 1,
        "cancelled": 1,
        "refused": 1,
        "unknown": 0,
    }


def test_poller_alive_while_a_child_holds_its_lock_then_dead(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    poller_state(spool)
    child = start_child(children, spool, "poller")
    poller = collect(spool.root, now=NOW)["poller"]
    assert poller == {
        "alive": True,
        "state_file": "ok",
        "pid": 4100,
        "name": "agent-1",
        "pool": "pool-a",
        "labels": ["linux", "gpu"],
        "work_queues": ["default"],
        "hostname": "host-a",
        "version": "0.1.0",
        "started": NOW - 3600,
        "updated": NOW - 2,
        "last_successful_poll": NOW - 12,
        "last_successful_poll_age_seconds": 12.0,
        "last_error": None,
        "waiting": None,
    }
    kill(child)
    poller = collect(spool.root, now=NOW)["poller"]
    assert poller["alive"] is False
    assert poller["pid"] == 4100  # last known values stay visible


def test_no_poller_ever(spool: Spool) -> None:
    poller = collect(spool.root, now=NOW)["poller"]
    assert poller["alive"] is False
    assert poller["state_file"] == "missing"
    assert poller["last_successful_poll"] is None
    assert poller["last_successful_poll_age_seconds"] is None
    assert not (spool.root / "poller.lock").exists()
