"""The wake-up on new specs (agent/spool/watch.py), on real folders with real inotify:
a worker waiting for work is woken by the poller's publish, not at its next idle look;
where inotify is unavailable it looks every idle period as before, and says so once."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.settings.config import ApiSettings, WorkerConfig
from agent.spool import watch
from agent.spool.moves import DONE, NEW, Spool
from agent.spool.registry import Registry
from agent.spool.watch import FolderWatch
from agent.worker.loop import Worker
from tests.unit.test_cancel import POOL, URL, ChildLauncher, WorkerClient, outcome, spool_run

LONG = 30.0  # a wait that must be ended early: far longer than any test here takes


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    return spool


def later(seconds: float, action: object) -> None:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.daemon = True
    timer.start()


def timed_wait(folder: FolderWatch, timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    woken = folder.wait(timeout)
    return woken, time.monotonic() - started


def test_a_published_spec_ends_the_wait(spool: Spool) -> None:
    folder = FolderWatch(spool.dir(NEW))
    assert folder.active
    later(0.1, lambda: spool_run(spool))
    woken, took = timed_wait(folder, LONG)
    assert woken and took < LONG / 2
    assert len(spool.run_ids(NEW)) == 1
    folder.close()


def test_nothing_published_waits_the_whole_timeout(spool: Spool) -> None:
    folder = FolderWatch(spool.dir(NEW))
    woken, took = timed_wait(folder, 0.2)
    assert not woken and took >= 0.2
    folder.close()


def test_a_poke_ends_the_wait_and_a_closed_watch_only_sleeps(spool: Spool) -> None:
    folder = FolderWatch(spool.dir(NEW))
    later(0.1, folder.poke)
    woken, took = timed_wait(folder, LONG)
    assert woken and took < LONG / 2
    folder.close()
    folder.poke()  # harmless once closed (a stop after the worker's loop ended)
    woken, took = timed_wait(folder, 0.1)
    assert not woken and took >= 0.1


def test_the_watch_follows_a_folder_deleted_and_made_again(spool: Spool) -> None:
    folder = FolderWatch(spool.dir(NEW))
    shutil.rmtree(spool.dir(NEW))
    # The deletion wakes nobody (a worker woken by it would re-create the spool while
    # an operator's `rm -r` is still deleting it), and the watch ends with the folder.
    woken, took = timed_wait(folder, 0.2)
    assert not woken and took >= 0.2
    assert not folder.active
    assert not folder.wait(0.1)  # nothing to watch: a plain sleep
    spool.dir(NEW).mkdir()  # as a worker's upkeep re-creates it
    folder.wait(0.0)
    assert folder.active
    later(0.1, lambda: spool_run(spool))
    woken, took = timed_wait(folder, LONG)
    assert woken and took < LONG / 2
    folder.close()


def test_without_inotify_the_wait_is_a_plain_sleep_said_once(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent")
    monkeypatch.setattr(watch, "_libc", lambda: None)
    folder = FolderWatch(spool.dir(NEW))
    assert not folder.active
    later(0.05, lambda: spool_run(spool))
    woken, took = timed_wait(folder, 0.4)
    assert not woken and took >= 0.4  # the spec is found by the caller's own look
    assert "no wake-up on new specs (no inotify on this system)" in caplog.text
    folder.close()


def test_an_inotify_that_refuses_is_said_once_and_the_wait_sleeps(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent")

    class NoInstances:
        def inotify_init1(self, flags: int) -> int:
            return -1  # as at the per-user limit (EMFILE)

    monkeypatch.setattr(watch, "_libc", NoInstances)
    folder = FolderWatch(spool.dir(NEW))
    for _ in range(3):
        assert not folder.wait(0.01)
    assert caplog.text.count("no wake-up on new specs (inotify_init1: ") == 1
    assert "looking every idle period instead" in caplog.text
    folder.close()


def test_an_idle_worker_takes_a_published_run_at_once_not_at_its_next_look(
    spool: Spool,
) -> None:
    # Its idle look is 30 s apart here: only the wake-up can start the run in time.
    client = WorkerClient(state="COMPLETED")
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id="w1",
        flow_python=sys.executable,
        pool=POOL,
        idle_sleep=LONG,
    )
    launcher = ChildLauncher(spool, "pass", cancel=False)
    worker = Worker(config, client, spool, Registry(spool.root), launcher, environ={})
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.3)  # the worker has looked, found nothing and waits
        run_id = spool_run(spool)
        deadline = time.monotonic() + LONG / 2
        while not (spool.dir(DONE) / f"{run_id}.json").exists():
            assert time.monotonic() < deadline, "the published run was not taken"
            time.sleep(0.05)
        assert outcome(spool, run_id) == "completed"
    finally:
        stopped = time.monotonic()
        worker.stop()  # ends its 30 s wait at once too
        thread.join(LONG)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < LONG / 2
