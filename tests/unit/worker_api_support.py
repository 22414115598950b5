"""Shared by the unit tests of the worker and the Prefect API (test_worker_look,
test_worker_reports, test_worker_flow_env; test_poison uses the client and the worker): a
scripted fake API client, a launcher of real child processes that notes what each start
saw, a real Worker on a real spool, the reports kept in its outbox, and probes of the API
made fast."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox, Report
from agent.core.errors import ApiError, TransientApiError
from agent.settings import defaults
from agent.settings.config import ApiSettings, WorkerConfig
from agent.spool.moves import Spool
from agent.spool.registry import Registry
from agent.worker.loop import Worker
from tests.unit.test_cancel import ChildHandle, ChildLauncher, spool_run

URL = "http://prefect.invalid/api"
POOL = "pool"
HOST = "host-1"
DOWN = TransientApiError("read_flow_run", f"cannot reach {URL}")

Answer = str | ApiError  # a state type, or what the call raises


class ScriptedClient(PrefectClient):
    """``reads`` answer read_flow_run in turn, then ``after`` (what the engine left);
    ``errors`` maps a call name to what it raises; ``on_read`` runs at each read."""

    def __init__(self, reads: Sequence[Answer], after: Answer = "COMPLETED") -> None:
        super().__init__(ApiSettings(url=URL))
        self.script = list(reads)
        self.after = after
        self.errors: dict[str, ApiError] = {}
        self.read_deadlines: list[float | None] = []
        self.proposed: list[tuple[dict[str, Any], bool]] = []
        self.pids: list[str] = []
        self.on_read: Callable[[int], None] | None = None

    @property
    def reads(self) -> int:
        return len(self.read_deadlines)

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_flow_run":
            self.read_deadlines.append(deadline)
            if self.on_read is not None:
                self.on_read(self.reads)
            answer = self.script.pop(0) if self.script else self.after
            if isinstance(answer, ApiError):
                raise answer
            # Our claim's transition id: a PENDING read is our Pending.
            state = {"type": answer, "state_details": {"transition_id": "claim-1"}}
            return {"id": path.rsplit("/", 1)[1], "state": state}
        if call == "set_flow_run_state":
            self.proposed.append((json["state"], json["force"]))
        if call == "update_flow_run":
            self.pids.append(json["infrastructure_pid"])
        if call in self.errors:
            raise self.errors[call]
        if call == "set_flow_run_state":
            return {"status": "ACCEPT", "state": json["state"]}
        return None


class CountingLauncher(ChildLauncher):
    """A real child (``pass`` unless told), noting how many reads came before it."""

    def __init__(self, spool: Spool, client: ScriptedClient, code: str = "pass") -> None:
        super().__init__(spool, code, cancel=False)
        self.client = client
        self.reads_at_start: list[int] = []
        self.envs: list[dict[str, str]] = []

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        run_dir: Path,
        keep_fds: Sequence[int],
        echo_prefix: str | None,
        cgroups: Sequence[Path] = (),
    ) -> ChildHandle:
        self.reads_at_start.append(self.client.reads)
        self.envs.append(dict(env))
        return super().start(argv, env, cwd, run_dir, keep_fds, echo_prefix)


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "API_PROBE_SECONDS", 0.01)


def make_worker(spool: Spool, client: ScriptedClient, launcher: ChildLauncher) -> Worker:
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id="w1",
        flow_python=sys.executable,
        pool=POOL,
        hostname=HOST,
        cancel_watch=0.05,
    )
    return Worker(config, client, spool, Registry(spool.root), launcher, environ={})


def run_once(
    spool: Spool, client: ScriptedClient, run_id: str | None = None
) -> tuple[str, CountingLauncher]:
    """Spool a run and have a worker handle it; the lease is released after."""
    launcher = CountingLauncher(spool, client)
    worker = make_worker(spool, client, launcher)
    run_id = spool_run(spool, run_id)
    lease = spool.take()
    assert lease is not None
    try:
        worker.handle(lease)
    finally:
        lease.release()
    return run_id, launcher


def reports(spool: Spool) -> list[Report]:
    found = []
    for _, report, problem in Outbox(spool.root).pending():
        assert report is not None, problem
        found.append(report)
    return found


def in_state(spool: Spool, state: str) -> list[str]:
    return sorted(p.name for p in spool.dir(state).iterdir())
