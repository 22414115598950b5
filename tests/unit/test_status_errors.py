"""agent/cli/status.py: `agent status` on a spool that is missing, unreadable or holds
garbage: a clear SpoolError, or errors shown in the snapshot and table instead of
tracebacks; and collecting a snapshot changes nothing in the spool.

Spools are built with the real Spool and Registry code; live and dead workers and
pollers are child processes holding (or having held) the real flocks.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent.cli.status import collect
from agent.cli.status_table import render_table
from agent.core.errors import SpoolError
from agent.spool.moves import DONE, NEW, Spool
from tests.unit.status_support import NOW, deliver, finish, kill, poller_state, start_child

# A pytest fixture, found by its name in this module: imported as itself.
from tests.unit.status_support import children as children


def tree(root: Path) -> dict[str, tuple[int, float, int]]:
    """Every path under root with its size, mtime and mode: to prove nothing changed."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        result[str(path.relative_to(root))] = (st.st_size, st.st_mtime, st.st_mode)
    return result


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
