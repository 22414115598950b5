"""A spool deleted under a running agent is re-created: by the poller's write probe
(every poll) and by idle workers, which also register again, so the poller counts them
and claims for them. Nothing needs a restart. Real folders; a real Worker in a thread."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from agent.spool.moves import RUNS, STATE_DIRS, Spool
from agent.spool.registry import IDLE, Registry
from tests.unit.crashloop_support import make_worker, running


def folders(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.root.iterdir() if p.is_dir())


def test_the_pollers_write_probe_re_creates_a_deleted_spool(spool: Spool) -> None:
    shutil.rmtree(spool.root)
    assert spool.probe() is None
    assert set(folders(spool)) == {*STATE_DIRS, RUNS}
    assert spool.heal() is False  # whole again: nothing to do


def test_a_worker_whose_registry_was_deleted_registers_again(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.register("w1")
    assert registry.still_registered()
    shutil.rmtree(tmp_path / "workers")
    assert not registry.still_registered()
    registry.register("w1")
    assert registry.still_registered()
    assert Registry(tmp_path).counts()[IDLE] == 1


def test_an_idle_worker_re_creates_a_deleted_spool_and_its_registration(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, "w1")
    spool = worker.spool
    with running(worker):
        deadline = time.monotonic() + 20
        while Registry(spool.root).counts()[IDLE] != 1:
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.02)
        # The worker may write its registry entry while the tree goes (as it may under
        # an operator's rm -rf): "Directory not empty" then; delete again.
        for _ in range(100):
            try:
                shutil.rmtree(spool.root)
                break
            except OSError:
                time.sleep(0.01)
        while not (
            spool.root.is_dir()
            and set(STATE_DIRS) <= set(folders(spool))
            and Registry(spool.root).counts()[IDLE] == 1
        ):
            assert time.monotonic() < deadline, "the spool and registration were not re-made"
            time.sleep(0.02)
