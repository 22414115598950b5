"""Adopting a run whose worker died: process identity, the status reading, the lease."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from agent.spool.moves import Spool
from agent.worker.adopt import LOST_MESSAGE, Found, classify
from agent.worker.launcher import ExitStatus
from agent.worker.procid import ProcessId, boot_id, identify, start_time


def test_a_live_process_is_itself_and_a_reused_pid_is_not() -> None:
    me = identify(os.getpid())
    assert me is not None and me.alive()
    assert not ProcessId(me.pid, me.start + 1, me.boot).alive()  # same pid, later process
    assert not ProcessId(me.pid, me.start, "another-boot").alive()


def test_a_dead_process_has_no_identity() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert start_time(proc.pid) is None
    assert identify(proc.pid) is None


def test_start_time_parses_names_with_spaces_and_parens(tmp_path: Path) -> None:
    fields = ["S", *["0"] * 18, "4242", "0"]  # state, then fields 4..21, then 22 = start
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text(f"77 (we ird) (name)) {' '.join(fields)}\n")
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("b-1\n")
    assert start_time(77, tmp_path) == 4242
    assert boot_id(tmp_path) == "b-1"
    assert ProcessId(77, 4242, "b-1").alive(tmp_path)
    (tmp_path / "77" / "stat").write_text(f"77 (zombie) Z {' '.join(fields[1:])}\n")
    assert start_time(77, tmp_path) is None


def test_identity_round_trips_through_json() -> None:
    pid = ProcessId(1, 2, "b")
    assert ProcessId.from_json(pid.to_json()) == pid
    assert ProcessId.from_json({"pid": "1", "start": 2, "boot": "b"}) is None
    assert ProcessId.from_json(None) is None


FLOW = {"pid": 10, "start": 5, "boot": "b"}


def test_classify_each_case() -> None:
    def alive(p: ProcessId) -> bool:
        return True

    def dead(p: ProcessId) -> bool:
        return False

    assert classify({}, alive).found is Found.NEVER_STARTED
    ended = classify({"phase": "ended", "returncode": 3, "flow": FLOW}, alive)
    assert (ended.found, ended.status) == (Found.ENDED, ExitStatus(3))
    running = classify({"phase": "running", "pid": 10, "flow": FLOW}, alive)
    assert (running.found, running.flow) == (Found.RUNNING, ProcessId(10, 5, "b"))
    gone = classify({"phase": "running", "pid": 10, "flow": FLOW}, dead)
    assert (gone.found, gone.status) == (Found.LOST, ExitStatus(None, LOST_MESSAGE))
    # The shim died while starting the flow: it may have started, so never again.
    assert classify({"phase": "starting"}, alive).found is Found.LOST
    # No identity recorded (an older shim): a bare pid is not trusted.
    assert classify({"phase": "running", "pid": 10}, alive).found is Found.LOST


def test_only_an_unheld_spec_in_cur_is_adopted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    for run_id in ("held", "orphan"):
        spool.write_ahead(run_id, run_id.encode())
        spool.publish(run_id)
    held = spool.take()
    orphan = spool.take()
    assert held is not None and orphan is not None
    assert spool.adopt() is None  # both leased
    os.close(orphan.fd)  # its worker and shim die
    orphan.fd = -1
    adopted = spool.adopt()
    assert adopted is not None
    assert (adopted.run_id, adopted.data, adopted.adopted) == ("orphan", b"orphan", True)
    assert spool.adopt() is None  # now ours
    # The lease really is exclusive: nobody else can lock it.
    probe = os.open(adopted.path, os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raise AssertionError("adopted lease is not held")
    except BlockingIOError:
        pass
    finally:
        os.close(probe)
    spool.finish(adopted, "completed")
    held.release()
    assert spool.adopt() is not None  # `held`'s turn: its holder let go
