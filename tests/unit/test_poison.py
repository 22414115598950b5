"""Poison specs: a spec whose taking killed two workers before its flow started goes to
failed/ and its run is Failed, saying how each worker died; the other runs flow on. The
pure decision (agent/core/poison.py), the take record (agent/spool/takes.py), and a real
Worker whose spec was taken by two real processes that were SIGKILLed holding it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from prometheus_client import REGISTRY

from agent.core.poison import Take, deaths, how_died, reason, should_quarantine
from agent.spool.moves import CUR, DONE, FAILED, NEW, Spool
from agent.spool.takes import Takes
from tests.unit.test_cancel import ChildLauncher, spool_run
from tests.unit.worker_api_support import ScriptedClient, make_worker

SUPERVISOR_LOG = """\
2026-12-02 18:00:00,001 INFO spawned: 'agent-worker_00' with pid 101
2026-12-02 18:00:00,002 INFO spawned: 'agent-worker_01' with pid 102
2026-12-02 18:00:00,003 INFO spawned: 'agent' with pid 100
2026-12-02 18:00:05,000 WARN exited: agent-worker_00 (terminated by SIGKILL; not expected)
2026-12-02 18:00:05,100 INFO spawned: 'agent-worker_00' with pid 103
2026-12-02 18:00:06,000 WARN exited: agent-worker_01 (exit status 1; not expected)
2026-12-02 18:00:07,000 WARN exited: agent (exit status 0; expected)
2026-12-02 18:00:08,000 WARN exited: agent-worker_00 (terminated by SIGSEGV (core dumped); \
not expected)
"""


def take(worker: str = "w", pid: int = 1, let_go: bool = False) -> Take:
    return Take(worker, pid, 1_700_000_000.0, let_go)


# -- the decision ----------------------------------------------------------------------


def test_a_spec_is_quarantined_once_two_workers_died_holding_it() -> None:
    assert not should_quarantine([], flow_started=False)
    assert not should_quarantine([take(pid=1)], flow_started=False)
    assert should_quarantine([take(pid=1), take(pid=2)], flow_started=False)


def test_workers_that_let_go_of_a_spec_alive_are_no_deaths() -> None:
    earlier = [take(pid=1, let_go=True), take(pid=2), take(pid=3, let_go=True)]
    assert deaths(earlier) == [take(pid=2)]
    assert not should_quarantine(earlier, flow_started=False)


def test_deaths_after_the_flow_started_never_quarantine_its_spec() -> None:
    assert not should_quarantine([take(pid=1), take(pid=2), take(pid=3)], flow_started=True)


def test_how_workers_died_is_read_from_supervisords_log() -> None:
    found = how_died(SUPERVISOR_LOG, ["agent-worker_00", "agent-worker_01"])
    assert found == {
        101: "terminated by SIGKILL",
        102: "exit status 1",
        103: "terminated by SIGSEGV (core dumped)",
    }
    assert how_died(SUPERVISOR_LOG, ["agent-worker_01"]) == {102: "exit status 1"}


def test_the_reason_names_each_worker_and_how_it_died() -> None:
    died = [take("agent-worker_00", 101), take("agent-worker_01", 102), take("w9", 109)]
    text = reason(died, {101: "terminated by SIGKILL", 102: "exit status 1"})
    assert text.startswith("Quarantined: taking this run killed 3 worker processes before ")
    assert "worker agent-worker_00 (PID 101, took it at " in text
    assert ") ended: terminated by SIGKILL; worker agent-worker_01 (PID 102" in text
    assert ") ended: exit status 1; worker w9 (PID 109" in text
    assert ") died, how is not recorded (no supervisord log). Its spec" in text
    assert text.endswith("Its spec is in failed/ and no worker takes it again.")


# -- the record --------------------------------------------------------------------------


def test_each_take_is_recorded_and_a_clean_let_go_marked(spool: Spool) -> None:
    takes = Takes(spool.dir(CUR))
    run_id, data = "r1", b'{"spec": 1}'
    assert takes.record(run_id, data, "w1") == ([], False)
    takes.let_go(run_id, data)
    earlier, started = takes.record(run_id, data, "w2")
    assert [(t.worker, t.pid, t.let_go) for t in earlier] == [("w1", os.getpid(), True)]
    assert started is False
    takes.starting(run_id, data)
    earlier, started = takes.record(run_id, data, "w3")
    assert len(earlier) == 2 and started is True
    assert oct(takes.path(run_id).stat().st_mode & 0o777) == "0o600"


def test_a_record_of_another_claims_spec_does_not_count(spool: Spool) -> None:
    takes = Takes(spool.dir(CUR))
    takes.record("r1", b"claim 1", "w1")
    takes.record("r1", b"claim 1", "w2")
    assert takes.record("r1", b"claim 2", "w3") == ([], False)


def test_a_retired_spec_leaves_no_take_record(spool: Spool) -> None:
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    Takes(spool.dir(CUR)).record(run_id, lease.data, "w1")
    spool.finish(lease, "completed")
    assert sorted(p.name for p in spool.dir(CUR).iterdir()) == []
    assert sorted(p.name for p in spool.dir(DONE).iterdir()) == [
        f"{run_id}.json",
        f"{run_id}.outcome",
    ]


# -- a real worker after two real deaths ---------------------------------------------------

DIE_HOLDING = """
import os, signal, sys
from pathlib import Path
from agent.spool.moves import CUR, Spool
from agent.spool.takes import Takes
spool = Spool(Path(sys.argv[1]))
lease = spool.adopt() or spool.take()
assert lease is not None
Takes(spool.dir(CUR)).record(lease.run_id, lease.data, sys.argv[2])
os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: no clean-up at all
"""


def die_holding_the_spec(spool: Spool, worker: str) -> None:
    proc = subprocess.run([sys.executable, "-c", DIE_HOLDING, str(spool.root), worker], timeout=60)
    assert proc.returncode == -signal.SIGKILL


def quarantined() -> float:
    return REGISTRY.get_sample_value("agent_specs_quarantined_total") or 0.0


def test_a_spec_that_killed_two_workers_is_quarantined_and_its_run_failed(
    spool: Spool,
) -> None:
    poison = spool_run(spool, str(uuid.uuid4()))
    die_holding_the_spec(spool, "w-first")
    die_holding_the_spec(spool, "w-second")
    good = spool_run(spool, str(uuid.uuid4()))
    client = ScriptedClient(["PENDING"], after="COMPLETED")
    worker = make_worker(spool, client, ChildLauncher(spool, "pass", cancel=False))
    before = quarantined()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (spool.dir(DONE) / f"{good}.outcome").exists():
            assert time.monotonic() < deadline, "the good run was not settled"
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(10)
    note = (spool.dir(FAILED) / f"{poison}.reason").read_text()
    assert note.startswith("Quarantined: taking this run killed 2 worker processes before ")
    assert "worker w-first (PID " in note and "worker w-second (PID " in note
    assert sorted(p.name for p in spool.dir(FAILED).iterdir()) == [
        f"{poison}.json",
        f"{poison}.reason",
    ]
    assert sorted(p.name for p in spool.dir(CUR).iterdir()) == []
    assert sorted(p.name for p in spool.dir(NEW).iterdir()) == []
    failed = [s for s, _ in client.proposed if s["type"] == "FAILED"]
    assert [s["message"] for s in failed] == [note]
    assert quarantined() == before + 1
