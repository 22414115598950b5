"""agent/cli/status.py: the `agent status` snapshot, its table and its exit code.

Spools are built with the real Spool and Registry code; live and dead workers and
pollers are child processes holding (or having held) the real flocks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.status import EXIT_DEGRADED, EXIT_OK, OUTCOMES, age, collect, exit_code
from agent.cli.status_table import render_table
from agent.core.errors import SpoolError
from agent.core.spec import JobSpec, dumps
from agent.spool.locks import write_poller_state
from agent.spool.moves import DONE, FAILED, NEW, Lease, Spool
from agent.spool.registry import Registry
from agent.worker.shim import write_status

NOW = 1_700_000_000.0
SECRET = "s3cr3t-env-value"
ROOT_DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"

# A child that takes on roles on a spool, says "ready", then sleeps until killed:
#   poller          holds poller.lock
#   idle:<id>       registers worker <id>
#   busy:<id>       registers worker <id>, takes the oldest spec and marks itself busy
_CHILD = """
import sys, time
from pathlib import Path
from agent.spool.registry import BUSY, Registry
from agent.spool.moves import Spool
from agent.spool.locks import lock_poller
root = Path(sys.argv[1])
keep = []
for action in sys.argv[2:]:
    kind, _, arg = action.partition(":")
    if kind == "poller":
        keep.append(lock_poller(root))
        continue
    registry = Registry(root)
    registry.register(arg)
    keep.append(registry)
    if kind == "busy":
        lease = Spool(root).take()
        assert lease is not None
        registry.set_state(BUSY, lease.run_id)
        keep.append(lease)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def start_child(
    children: list[subprocess.Popen[str]], spool: Spool, *actions: str
) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(spool.root), *actions],
        stdout=subprocess.PIPE,
        text=True,
    )
    children.append(child)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


def deliver(
    spool: Spool,
    run_id: str,
    name: str = "",
    claimed_at: float = NOW - 30,
    scheduled_start: str | None = None,
    mtime: float | None = None,
) -> None:
    spec = JobSpec(
        flow_run_id=run_id,
        pool="pool-a",
        transition_id="t-1",
        agent_name="agent-1",
        flow_run_name=name or f"name-{run_id}",
        scheduled_start=scheduled_start,
        claimed_at=claimed_at,
        env_vars={"API_TOKEN": SECRET},
    )
    spool.write_ahead(run_id, dumps(spec))
    spool.publish(run_id)
    if mtime is not None:
        os.utime(spool.dir(NEW) / f"{run_id}.json", (mtime, mtime))


def finish(spool: Spool, run_id: str, outcome: str, at: float) -> None:
    """A run that finished at ``at``: its note says so, and its mtime agrees."""
    deliver(spool, run_id)
    lease = spool.take()
    assert lease is not None and lease.run_id == run_id
    spool.finish(lease, outcome)
    note = spool.dir(DONE) / f"{run_id}.outcome"
    note.write_text(json.dumps({"outcome": outcome, "at": at}))
    os.utime(note, (at, at))


def refuse(spool: Spool, run_id: str, at: float) -> None:
    deliver(spool, run_id)
    lease = spool.take()
    assert lease is not None
    spool.refuse(lease, "spec is for work pool 'other'")
    os.utime(spool.dir(FAILED) / f"{run_id}.reason", (at, at))


def poller_state(spool: Spool, **changes: object) -> None:
    state: dict[str, object] = {
        "pid": 4100,
        "name": "agent-1",
        "pool": "pool-a",
        "labels": ["linux", "gpu"],
        "work_queues": ["default"],
        "hostname": "host-a",
        "version": "0.1.0",
        "started": NOW - 3600,
        "last_successful_poll": NOW - 12,
        "last_error": None,
        "updated": NOW - 2,
    }
    state.update(changes)
    write_poller_state(spool.root, state)


def tree(root: Path) -> dict[str, tuple[int, float, int]]:
    """Every path under root with its size, mtime and mode: to prove nothing changed."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        result[str(path.relative_to(root))] = (st.st_size, st.st_mtime, st.st_mode)
    return result


def column_starts(line: str) -> list[int]:
    """Start of each cell: cells are separated by two or more spaces."""
    return [0] + [m.end() for m in re.finditer(r" {2,}", line)]


def section(table: str, title: str) -> list[str]:
    """The lines of one section (title line first), up to the next blank line."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


# -- errors and read-only ------------------------------------------------------------


def test_missing_spool_is_a_clear_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match=r"no spool at .*nowhere \(is --spool / AGENT_SPOOL_DIR"):
        collect(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_that_is_not_a_spool_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for root in (tmp_path, tmp_path / "file"):
        with pytest.raises(SpoolError, match="no spool at"):
            collect(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads owner-only folders anyway")
def test_unreadable_spool_says_to_run_as_the_agents_user(spool: Spool) -> None:
    os.chmod(spool.dir(NEW), 0)
    try:
        with pytest.raises(SpoolError, match=r"cannot read spool .*agent's user"):
            collect(spool.root)
    finally:
        os.chmod(spool.dir(NEW), 0o700)


def test_collect_changes_nothing_in_the_spool(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    deliver(spool, "run-a", mtime=NOW - 50)
    deliver(spool, "run-b", mtime=NOW - 40)
    start_child(children, spool, "poller", "busy:w1")
    dead = start_child(children, spool, "busy:w2")
    kill(dead)
    finish(spool, "run-c", "completed", NOW - 10)
    poller_state(spool)
    before = tree(spool.root)
    snapshot = collect(spool.root, now=NOW)
    assert tree(spool.root) == before
    # and the run folders of running runs are read, never created
    assert {r["flow_run_id"] for r in snapshot["runs"]["running"]} == {"run-a", "run-b"}
    assert not list(spool.dir("runs").iterdir())


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


# -- garbage -------------------------------------------------------------------------


def test_garbage_files_show_as_errors_not_tracebacks(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    deliver(spool, "run-a")
    start_child(children, spool, "busy:w1")
    (spool.dir(NEW) / "empty.json").write_bytes(b"")
    (spool.dir(NEW) / "half.json").write_bytes(b'{"version": 1, "flow_run_na')
    (spool.dir(NEW) / "future.json").write_text(
        json.dumps({"version": 2, "flow_run_id": "future", "flow_run_name": "from-v2"})
    )
    (spool.root / "poller.json").write_bytes(b"not json {")
    (spool.run_dir("run-a") / "status.json").write_bytes(b'{"pid": ')
    (spool.dir(DONE) / "bad.outcome").write_bytes(b"\x00\xff")
    os.utime(spool.dir(DONE) / "bad.outcome", (NOW, NOW))
    snapshot = collect(spool.root, now=NOW)
    json.dumps(snapshot)  # still serialisable
    waiting = {w["flow_run_id"]: w for w in snapshot["runs"]["waiting"]}
    assert waiting["empty"]["error"] == "spec file is empty"
    assert "not valid JSON" in waiting["half"]["error"]
    assert "unknown spec version 2" in waiting["future"]["error"]
    assert waiting["future"]["name"] == "from-v2"  # what can be read is still shown
    assert snapshot["poller"]["state_file"] == "unreadable"
    assert snapshot["poller"]["pid"] is None
    [run] = snapshot["runs"]["running"]
    assert run["pid"] is None and run["watched"] is True
    assert snapshot["runs"]["finished_last_hour"]["unknown"] == 1
    table = render_table(snapshot)
    assert "poller.json unreadable" in table
    assert "(bad spec: spec file is empty)" in table


def test_poller_json_fields_of_the_wrong_type_become_null(spool: Spool) -> None:
    poller_state(spool, pid="4100", labels="gpu", last_successful_poll=True, pool=7)
    poller = collect(spool.root, now=NOW)["poller"]
    assert (poller["pid"], poller["labels"], poller["last_successful_poll"]) == (None, None, None)
    assert poller["pool"] is None and poller["name"] == "agent-1"


# -- schema and docs -----------------------------------------------------------------


def full_snapshot(spool: Spool, children: list[subprocess.Popen[str]]) -> dict[str, Any]:
    """One of everything: poller, busy/idle/dead workers, running, waiting, finished."""
    poller_state(spool)
    finish(spool, "done-1", "completed", NOW - 5)
    deliver(spool, "run-a", name="etl-nightly", mtime=NOW - 400)
    start_child(children, spool, "poller", "busy:w1", "idle:w0")
    write_status(spool.run_dir("run-a"), {"pid": 777003, "started": NOW - 200})
    kill(start_child(children, spool, "idle:w2"))
    for i in range(12):
        deliver(spool, f"wait-{i:02}", claimed_at=NOW - 100 + i, mtime=NOW - 100 + i)
    return collect(spool.root, now=NOW)


def test_every_field_is_documented_and_the_schema_is_1(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    snapshot = full_snapshot(spool, children)
    assert snapshot["schema"] == 1
    assert set(snapshot) == {
        *("schema", "spool", "generated_at", "poller", "runs", "workers", "containment")
    }
    assert set(snapshot["runs"]) == {"waiting", "running", "finished_last_hour"}
    assert list(snapshot["runs"]["finished_last_hour"]) == list(OUTCOMES)
    assert snapshot == json.loads(json.dumps(snapshot))
    docs = ROOT_DOCS.read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", docs, re.MULTILINE))
    fields = set(snapshot) | set(snapshot["poller"]) | set(snapshot["runs"])
    fields |= set(snapshot["runs"]["waiting"][0]) | set(snapshot["runs"]["running"][0])
    fields |= set(snapshot["workers"][0]) | set(OUTCOMES)
    assert fields - documented == set()


# -- table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"),
     (3600, "1h"), (86399, "23h"), (86400 * 3, "3d")],
)  # fmt: skip
def test_age_uses_whole_units(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


def test_table_has_header_aligned_sections_and_no_env_values(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    table = render_table(full_snapshot(spool, children))
    assert SECRET not in table
    head = dict(line.split(None, 1) for line in table.splitlines()[:2])
    assert head == {"spool": f"{spool.root}", "pool": "pool-a"}
    assert "labels     linux, gpu\n" in table
    assert "running, pid 4100, agent-1 on host-a, version 0.1.0" in table
    assert "last poll  12s ago\n" in table
    assert "health     DEGRADED: worker w2 dead\n" in table

    workers = section(table, "WORKERS")
    assert workers[0] == "WORKERS (3: 1 busy, 1 idle, 1 dead)"
    assert workers[1].split() == ["WORKER", "STATE", "PID", "FLOW", "RUN", "SINCE", "EXITS"]
    assert [line.split()[:2] for line in workers[2:]] == [
        ["w0", "idle"],
        ["w1", "busy"],
        ["w2", "dead"],
    ]
    # every cell starts under its header
    starts = column_starts(workers[1])
    for line in workers[2:]:
        assert column_starts(line) == starts, line

    running = section(table, "RUNNING")
    assert running[0] == "RUNNING (1)"
    assert running[1].split()[:4] == ["FLOW", "RUN", "NAME", "WORKER"]
    assert running[2].split() == ["run-a", "etl-nightly", "w1", "777003", "3m"]
    assert column_starts(running[2]) == column_starts(running[1])[:-1]  # NOTE empty

    waiting = section(table, "WAITING")
    assert waiting[0] == "WAITING (12, oldest 1m)"
    assert len(waiting) == 2 + 10 + 1  # title, header, 10 shown, "and 2 more"
    assert waiting[2].split()[:3] == ["wait-00", "name-wait-00", "1m"]
    assert waiting[-1] == "... and 2 more (--json lists all)"
    for line in waiting[2:-1]:
        assert column_starts(line) == column_starts(waiting[1])

    finished = section(table, "FINISHED")
    assert finished[1].split() == ["COMPLETED", "FAILED", "CRASHED", "CANCELLED", "REFUSED"]
    assert finished[2].split() == ["1", "0", "0", "0", "0"]
    assert column_starts(finished[2]) == column_starts(finished[1])


def test_table_flags_a_dead_poller_orphans_and_strange_names(spool: Spool) -> None:
    poller_state(spool, last_error="GET /work_pools/pool-a: 503\nretrying")
    deliver(spool, "run-a", name="evil\x1b[31mname")
    lease = spool.take()
    assert lease is not None
    lease.release()  # nobody holds it now: orphaned
    table = render_table(collect(spool.root, now=NOW))
    assert "NOT RUNNING (last pid 4100)" in table
    assert "health     DEGRADED: poller not running\n" in table
    assert "last error GET /work_pools/pool-a: 503?retrying\n" in table
    assert "\x1b" not in table
    assert "evil?[31mname" in table
    assert "ORPHANED" in table


def test_empty_spool_table(spool: Spool) -> None:
    table = render_table(collect(spool.root, now=NOW))
    assert "last poll  never\n" in table
    for title in ("WORKERS (0: 0 busy, 0 idle, 0 dead)", "RUNNING (0)", "WAITING (0)"):
        assert section(table, title) == [title]


# -- exit code -----------------------------------------------------------------------


def test_exit_code_is_0_when_poller_and_workers_live(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "poller", "idle:w0")
    assert exit_code(collect(spool.root, now=NOW)) == EXIT_OK == 0


def test_exit_code_is_3_without_a_poller(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "idle:w0")
    assert exit_code(collect(spool.root, now=NOW)) == EXIT_DEGRADED == 3


def test_exit_code_is_3_with_a_dead_worker(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "poller", "idle:w0")
    kill(start_child(children, spool, "idle:w1"))
    assert exit_code(collect(spool.root, now=NOW)) == EXIT_DEGRADED


def test_a_worker_that_exited_cleanly_is_gone_not_dead(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "poller")
    registry = Registry(spool.root)
    registry.register("w0")
    registry.unregister()
    snapshot = collect(spool.root, now=NOW)
    assert snapshot["workers"] == []
    assert exit_code(snapshot) == EXIT_OK
