"""A worker whose spool write fails mid-run (a full disk) stays up: the spec stays in
cur/, and once the disk recovers the worker adopts it and settles it without running
the flow again. Real Worker, spool, registry and child process; a fake API."""

from __future__ import annotations

import errno
import json
import sys
import threading
from pathlib import Path

import pytest

from agent.core.errors import SpoolError
from agent.settings import defaults
from agent.settings.config import ApiSettings, WorkerConfig
from agent.spool.moves import CUR, DONE, Lease, Spool
from agent.spool.registry import Registry
from agent.worker.loop import Worker
from tests.unit.test_cancel import POOL, URL, ChildLauncher, WorkerClient, outcome, spool_run


class FullOnceSpool(Spool):
    """The first ``finish`` fails as on a full disk; later ones work."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failures = 0

    def finish(self, lease: Lease, outcome: str, claim: str | None = None) -> None:
        if self.failures == 0:
            self.failures += 1
            raise SpoolError(
                f"cannot move flow run {lease.run_id} to done/: "
                f"[Errno {errno.ENOSPC}] No space left on device"
            )
        super().finish(lease, outcome, claim)


def test_a_failed_finish_keeps_the_worker_up_and_the_run_settles_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(defaults, "SPOOL_RETRY_SECONDS", 0.05)
    spool = FullOnceSpool(tmp_path / "spool")
    spool.ensure()
    client = WorkerClient(state="COMPLETED")
    launcher = ChildLauncher(spool, "pass", cancel=False)
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id="w1",
        flow_python=sys.executable,
        pool=POOL,
        idle_sleep=0.05,
    )
    worker = Worker(config, client, spool, Registry(spool.root), launcher, environ={})
    run_id = spool_run(spool)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = threading.Event()
        for _ in range(200):
            if (spool.dir(DONE) / f"{run_id}.json").exists():
                break
            deadline.wait(0.05)
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert spool.failures == 1
    assert outcome(spool, run_id) == "completed"
    # The execution's own record of its outcome, beside its log and exit status.
    note = json.loads((spool.execution_path(run_id, "claim-1") / "outcome.json").read_bytes())
    assert note["outcome"] == "completed"
    assert list(spool.dir(CUR).glob("*.json")) == []
    assert len(launcher.handles) == 1  # adopted after the failure, never started again
    assert client.proposed == []  # the engine's Completed stands; nothing reported twice
    assert f"flow run {run_id}: spool error, trying again in 0s" in caplog.text
    # No worker died: the log does not say so.
    assert f"flow run {run_id}: taken up again after its worker let go of it" in caplog.text
    assert "adopted after its worker died" not in caplog.text
