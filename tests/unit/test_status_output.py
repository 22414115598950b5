"""agent/cli/status.py and agent/cli/status_table.py: what `agent status` prints: the
JSON snapshot's schema (every field documented in docs/status.md) and the table.

Spools are built with the real Spool and Registry code; live and dead workers and
pollers are child processes holding (or having held) the real flocks.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.cli.status import OUTCOMES, age, collect
from agent.cli.status_table import render_table
from agent.spool.moves import Spool
from agent.worker.shim import write_status
from tests.unit.status_support import NOW, SECRET, deliver, finish, kill, poller_state, start_child

# A pytest fixture, found by its name in this module: imported as itself.
from tests.unit.status_support import children as children

ROOT_DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"


def column_starts(line: str) -> list[int]:
    """Start of each cell: cells are separated by two or more spaces."""
    return [0] + [m.end() for m in re.finditer(r" {2,}", line)]


def section(table: str, title: str) -> list[str]:
    """The lines of one section (title line first), up to the next blank line."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


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
