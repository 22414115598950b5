"""The spool trusts nothing it finds: a directory, a FIFO, a socket or a symlink named
like a spec in new/, cur/ or tmp/ (any flow can write there) is moved aside to failed/
with a reason, never opened as a spec, and never blocks a worker, the poller or
`agent status`. Real files in the test's own folder."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.spool.files import read_json_object
from agent.spool.guard import NotRegularFile
from agent.spool.locks import is_locked
from agent.spool.moves import CUR, FAILED, NEW, TMP, Lease, Spool
from tests.unit.test_cancel import spool_run

KINDS = ("a directory", "a FIFO", "a socket", "a symlink")


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def plant(spool: Spool, state: str, kind: str, sockets: list[socket.socket], run_id: str) -> Path:
    """Something that is not a regular file, named like a spec, in ``state``."""
    path = spool.dir(state) / f"{run_id}.json"
    if kind == "a directory":
        path.mkdir()
    elif kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a socket":
        sock = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(path.parent)  # a socket's path is limited to 107 bytes: bind relative
        try:
            sock.bind(path.name)
        finally:
            os.chdir(cwd)
        sockets.append(sock)
    else:
        # The sneaky one: a link to a well-formed spec elsewhere. It is not followed.
        decoy = spool.root.parent / f"decoy-{run_id}.json"
        other = Spool(spool.root.parent / "other")
        other.ensure()
        spool_run(other, run_id)
        decoy.write_bytes(other.read(NEW, run_id))
        path.symlink_to(decoy)
    assert os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode)
    return path


def with_timeout(call: Callable[[], object], seconds: float = 10) -> object:
    """Run ``call`` in a thread: a FIFO opened for reading would block it for ever."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return result[0] if result else None


def set_aside(spool: Spool, run_id: str, kind: str, state: str) -> None:
    """What a user finds in failed/: the thing itself, untouched, and why it is there."""
    moved = spool.dir(FAILED) / f"{run_id}.json"
    assert os.path.lexists(moved)
    assert not stat.S_ISREG(os.lstat(moved).st_mode)
    assert not os.path.lexists(spool.dir(state) / f"{run_id}.json")
    reason = (spool.dir(FAILED) / f"{run_id}.reason").read_text()
    assert reason == (
        f"Not a spec: {kind} named like one was found in {state}/; moved aside untouched "
        "(only regular files are read from the spool)"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_file_in_new_is_set_aside_and_the_next_spec_is_taken(
    spool: Spool, leases: list[Lease], sockets: list[socket.socket], kind: str
) -> None:
    odd = str(uuid.uuid4())
    plant(spool, NEW, kind, sockets, odd)
    os.utime(spool.dir(NEW) / f"{odd}.json", (1, 1), follow_symlinks=False)  # oldest first
    good = spool_run(spool)
    lease = with_timeout(spool.take)
    assert isinstance(lease, Lease)
    leases.append(lease)
    assert lease.run_id == good
    set_aside(spool, odd, kind, NEW)


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_file_in_cur_is_set_aside_not_adopted(
    spool: Spool, sockets: list[socket.socket], kind: str
) -> None:
    odd = str(uuid.uuid4())
    plant(spool, CUR, kind, sockets, odd)
    assert with_timeout(spool.adopt) is None
    set_aside(spool, odd, kind, CUR)


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_file_in_tmp_is_set_aside_when_the_poller_reads_it(
    spool: Spool, sockets: list[socket.socket], kind: str
) -> None:
    odd = str(uuid.uuid4())
    plant(spool, TMP, kind, sockets, odd)

    def read() -> object:
        with pytest.raises(NotRegularFile):
            spool.read(TMP, odd)
        return True

    assert with_timeout(read) is True
    set_aside(spool, odd, kind, TMP)
    spool.discard(odd)  # what the poller does next: harmless now


@pytest.mark.parametrize("state", (TMP, NEW, CUR))
def test_an_idle_worker_screens_every_folder_for_non_files(
    spool: Spool, sockets: list[socket.socket], state: str
) -> None:
    planted = {str(uuid.uuid4()): kind for kind in KINDS}
    for run_id, kind in planted.items():
        plant(spool, state, kind, sockets, run_id)
    waiting = spool_run(spool)
    assert spool.screen() == len(KINDS)
    for run_id, kind in planted.items():
        set_aside(spool, run_id, kind, state)
    assert spool.run_ids(NEW) == [waiting]  # a real spec is left where it is


def test_a_name_taken_in_failed_is_never_overwritten(spool: Spool) -> None:
    run_id = str(uuid.uuid4())
    (spool.dir(FAILED) / f"{run_id}.json").write_bytes(b"an earlier refused spec")
    (spool.dir(NEW) / f"{run_id}.json").mkdir()
    assert spool.take() is None
    assert (spool.dir(FAILED) / f"{run_id}.json").read_bytes() == b"an earlier refused spec"
    [moved] = [p for p in spool.dir(FAILED).iterdir() if p.is_dir()]
    assert moved.name.startswith(f"{run_id}.") and moved.name.endswith(".json")
    assert (spool.dir(FAILED) / f"{moved.name[:-5]}.reason").exists()


def test_state_files_that_are_fifos_do_not_block_their_readers(tmp_path: Path) -> None:
    fifo = tmp_path / "worker.json"
    os.mkfifo(fifo)
    assert with_timeout(lambda: read_json_object(fifo)) is None
    assert with_timeout(lambda: is_locked(fifo)) is False


def test_agent_status_does_not_block_on_fifos_in_the_spool(spool: Spool) -> None:
    from agent.cli.status import collect

    for state in (NEW, CUR):
        os.mkfifo(spool.dir(state) / f"{uuid.uuid4()}.json")
    os.mkfifo(spool.root / "poller.json")
    (spool.root / "workers").mkdir()
    os.mkfifo(spool.root / "workers" / "w1.lock")
    os.mkfifo(spool.root / "workers" / "w1.json")
    body = with_timeout(lambda: collect(spool.root))
    assert isinstance(body, dict)
    json.dumps(body)  # a complete snapshot, nothing moved: status only looks
    assert len(list(spool.dir(NEW).iterdir())) == len(list(spool.dir(CUR).iterdir())) == 1
