"""Shared by the crash-loop unit tests (test_crashloop_policy, test_crashloop_registry,
test_crashloop_worker, test_crashloop_poller_status) and test_spool_deleted: the API URL,
a worker process that starts and then dies of an error (real files and flocks in a tmp
spool), and a real `Worker` on a tmp spool, run in a thread."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.api.client import PrefectClient
from agent.core.crashloop import Policy
from agent.settings.config import ApiSettings, WorkerConfig
from agent.spool.moves import Spool
from agent.spool.registry import Registry
from agent.worker.launcher import ShimLauncher
from agent.worker.loop import Worker

URL = "http://prefect.invalid/api"


def crash(
    make: Callable[[], Registry], worker_id: str = "w1", policy: Policy | None = None
) -> Registry:
    """A process of ``worker_id`` that starts and then dies of an error (entry kept)."""
    registry = make()
    registry.register(worker_id, policy)
    registry.release()
    return registry


def make_worker(tmp_path: Path, worker_id: str, policy: Policy | None = None) -> Worker:
    spool = Spool(tmp_path / "spool")
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id=worker_id,
        flow_python=sys.executable,
        idle_sleep=0.02,
        crash_loop=policy or Policy(),
    )
    return Worker(
        config, PrefectClient(config.api), spool, Registry(spool.root), ShimLauncher(1 << 20)
    )


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    """``worker.run()`` in a thread, stopped (as by SIGTERM) and joined on the way out."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
