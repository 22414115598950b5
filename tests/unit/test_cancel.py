"""Cancellation: the spool's moves (a waiting run cancelled, racing a worker's take; the
cancel request file), the poller acting on runs Prefect shows Cancelling, and the
worker stopping a running flow: real child processes in their own process groups, a
fake launcher that starts them, and a fake API client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.causes import Cause
from agent.core.spec import JobSpec, dumps
from agent.observe import metrics
from agent.poller.duty import run_due
from agent.poller.loop import Poller
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig, WorkerConfig
from agent.spool.moves import CANCEL_FILE, CUR, DONE, NEW, RUNS, Lease, Spool
from agent.spool.registry import Registry
from agent.worker.launcher import ExitStatus, signal_run
from agent.worker.loop import Worker
from agent.worker.procid import ProcessId, identify
from agent.worker.shim import STATUS_FILE, write_status

URL = "http://prefect.invalid/api"
POOL = "pool"
# Each says "ready" once set up, so that a signal never arrives before its handler is set.
READY = "print('ready', flush=True)"
SLEEPER = f"import time; {READY}; time.sleep(60)"
STUBBORN = (
    f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); {READY}; time.sleep(60)"
)


def spec_for(run_id: str, claim: str = "claim-1") -> JobSpec:
    return JobSpec(flow_run_id=run_id, pool=POOL, transition_id=claim, agent_name="agent")


def spool_run(spool: Spool, run_id: str | None = None, claim: str = "claim-1") -> str:
    run_id = run_id or str(uuid.uuid4())
    spool.write_ahead(run_id, dumps(spec_for(run_id, claim)))
    spool.publish(run_id)
    return run_id


def files(spool: Spool, state: str) -> list[str]:
    return sorted(p.name for p in spool.dir(state).iterdir())


def finished(outcome: str) -> float:
    """Runs finished with ``outcome``, whatever ended their process."""
    return float(sum(metrics.FINISHED.labels(outcome, c.value)._value.get() for c in Cause))


# -- the spool ----------------------------------------------------------------------------


def test_cancel_waiting_moves_new_to_done_with_a_cancelled_outcome(spool: Spool) -> None:
    run_id = spool_run(spool)
    assert spool.cancel_waiting(run_id, "Cancelled by agent a before it started")
    assert files(spool, NEW) == []
    assert files(spool, DONE) == [f"{run_id}.json", f"{run_id}.outcome"]
    note = json.loads((spool.dir(DONE) / f"{run_id}.outcome").read_bytes())
    assert note["outcome"] == "cancelled"
    assert note["reason"] == "Cancelled by agent a before it started"
    assert spool.take() is None  # nothing left for a worker
    assert not spool.cancel_waiting(run_id, "again")  # not waiting any more


def test_cancel_waiting_loses_to_a_worker_holding_the_spec(spool: Spool) -> None:
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    assert not spool.cancel_waiting(run_id, "too late")
    assert files(spool, CUR) == [f"{run_id}.json"]
    assert files(spool, DONE) == []  # no stray outcome note either
    lease.release()


def test_cancel_waiting_loses_while_a_worker_has_locked_but_not_yet_moved_it(
    spool: Spool,
) -> None:
    """A worker between its flock and its rename: the spec must be left to it."""
    import fcntl

    run_id = spool_run(spool)
    fd = os.open(spool.dir(NEW) / f"{run_id}.json", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert not spool.cancel_waiting(run_id, "racing")
        assert files(spool, NEW) == [f"{run_id}.json"]
        assert files(spool, DONE) == []
    finally:
        os.close(fd)


def race_once(spool: Spool, run_id: str) -> tuple[Lease | None, bool]:
    """A worker's take and the poller's cancel_waiting, released at the same instant."""
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def worker() -> None:
        barrier.wait()
        results["lease"] = spool.take()

    def poller() -> None:
        barrier.wait()
        results["cancelled"] = spool.cancel_waiting(run_id, "race")

    threads = [threading.Thread(target=worker), threading.Thread(target=poller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results["lease"], results["cancelled"]


def test_cancel_waiting_racing_take_exactly_one_wins(spool: Spool) -> None:
    wins = {"worker": 0, "poller": 0}
    for _ in range(200):
        run_id = spool_run(spool)
        lease, cancelled = race_once(spool, run_id)
        assert (lease is not None) != cancelled  # exactly one won
        in_cur = (spool.dir(CUR) / f"{run_id}.json").exists()
        in_done = (spool.dir(DONE) / f"{run_id}.json").exists()
        assert in_cur == (lease is not None) and in_done == cancelled
        assert (spool.dir(DONE) / f"{run_id}.outcome").exists() == in_done  # no stray note
        assert not (spool.dir(NEW) / f"{run_id}.json").exists()
        wins["poller" if cancelled else "worker"] += 1
        if lease is not None:
            spool.finish(lease, "completed")
    assert sum(wins.values()) == 200


def test_cancel_request_is_idempotent_and_names_its_claim(spool: Spool) -> None:
    run_id = str(uuid.uuid4())
    assert not spool.cancel_requested(run_id, "claim-1")
    assert spool.request_cancel(run_id, "claim-1", "Cancelling in Prefect")
    assert not spool.request_cancel(run_id, "claim-1", "Cancelling in Prefect")
    assert spool.cancel_requested(run_id, "claim-1")
    # A later claim of the same run (a retry) is not stopped by an old request...
    assert not spool.cancel_requested(run_id, "claim-2")
    # ...and a request for it replaces the old one.
    assert spool.request_cancel(run_id, "claim-2", "Cancelling in Prefect")
    assert spool.cancel_requested(run_id, "claim-2")
    path = spool.dir(RUNS) / run_id / CANCEL_FILE
    assert json.loads(path.read_bytes())["reason"] == "Cancelling in Prefect"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_finishing_a_run_removes_its_cancel_request(spool: Spool) -> None:
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    spool.request_cancel(run_id, "claim-1", "x")
    spool.finish(lease, "cancelled")
    assert not (spool.dir(RUNS) / run_id / CANCEL_FILE).exists()


# -- the poller ---------------------------------------------------------------------------


class PollerClient(PrefectClient):
    """The server: ``cancelling`` are the ids it shows Cancelling (of those asked)."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.cancelling: set[str] = set()
        self.calls: list[tuple[str, str, Any]] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, path, json))
        if call == "cancelling_flow_runs":
            asked = json["flow_runs"]["id"]["any_"]
            return [
                {"id": i, "state": {"type": "CANCELLING"}} for i in asked if i in self.cancelling
            ]
        if call == "set_flow_run_state":
            return {"status": "ACCEPT", "state": json["state"]}
        return None

    def named(self, call: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == call]


def make_poller(spool: Spool, client: PollerClient) -> Poller:
    config = PollerConfig(api=ApiSettings(url=URL), pool=POOL, spool_dir=spool.root, name="a1")
    return Poller(config, client, spool, Registry(spool.root))


def test_poller_cancels_a_waiting_run_and_asks_the_worker_of_a_running_one(spool: Spool) -> None:
    client = PollerClient()
    poller = make_poller(spool, client)
    running = spool_run(spool)
    lease = spool.take()
    assert lease is not None and lease.run_id == running
    waiting, left = spool_run(spool), spool_run(spool)
    client.cancelling = {waiting, running, "not-ours"}
    before = finished("cancelled")

    poller.cancellations.run()

    body = client.named("cancelling_flow_runs")[0][2]
    assert sorted(body["flow_runs"]["id"]["any_"]) == sorted([waiting, running, left])
    assert body["flow_runs"]["state"] == {"type": {"any_": ["CANCELLING", "CRASHED"]}}
    assert body["work_pools"] == {"name": {"any_": [POOL]}}
    # The waiting one: out of the spool, Cancelled (forced), counted.
    assert (spool.dir(DONE) / f"{waiting}.json").exists()
    states = client.named("set_flow_run_state")
    assert [(p.split("/")[2], b["state"]["type"], b["force"]) for _, p, b in states] == [
        (waiting, "CANCELLED", True)
    ]
    assert states[0][2]["state"]["message"] == "Cancelled by agent a1 before it started"
    assert finished("cancelled") == before + 1
    # The running one: its worker is asked, for its claim; the spec stays where it is.
    assert spool.cancel_requested(running, "claim-1")
    assert (spool.dir(CUR) / f"{running}.json").exists()
    # Not Cancelling: untouched.
    assert (spool.dir(NEW) / f"{left}.json").exists()
    assert not (spool.dir(RUNS) / left).exists()
    lease.release()


def test_poller_asks_nothing_when_the_spool_holds_no_run(spool: Spool) -> None:
    client = PollerClient()
    make_poller(spool, client).cancellations.run()
    assert client.calls == []


def test_poller_checks_for_cancellations_at_most_every_few_seconds(spool: Spool) -> None:
    client = PollerClient()
    poller = make_poller(spool, client)
    spool_run(spool)
    duty = poller.duty("cancellations")
    assert duty.every == defaults.CANCEL_CHECK_SECONDS > 0
    now = time.monotonic()
    run_due([duty], now, poller.s.outage)
    run_due([duty], now + defaults.CANCEL_CHECK_SECONDS / 2, poller.s.outage)
    assert len(client.named("cancelling_flow_runs")) == 1
    run_due([duty], now + defaults.CANCEL_CHECK_SECONDS, poller.s.outage)
    assert len(client.named("cancelling_flow_runs")) == 2


# -- the worker ---------------------------------------------------------------------------


class WorkerClient(PrefectClient):
    """Reads the run as Pending the first time (the worker's look before it starts the
    flow), then as ``state`` (what the engine left); records proposed states."""

    def __init__(self, state: str = "RUNNING") -> None:
        super().__init__(ApiSettings(url=URL))
        self.state = state
        self.reads = 0
        self.proposed: list[tuple[dict[str, Any], bool]] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_flow_run":
            self.reads += 1
            state = "PENDING" if self.reads == 1 else self.state
            # Our Pending: the claim's transition id, as the poller proposed it.
            details = {"transition_id": "claim-1"}
            return {
                "id": path.rsplit("/", 1)[1],
                "state": {"type": state, "state_details": details},
            }
        if call == "set_flow_run_state":
            self.proposed.append((json["state"], json["force"]))
            return {"status": "ACCEPT", "state": json["state"]}
        return None


class ChildHandle:
    """A real child in its own session, recorded in status.json as the shim would."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.note = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        try:
            return ExitStatus(self.proc.wait(timeout))
        except subprocess.TimeoutExpired:
            return None


class ChildLauncher:
    """Starts ``code`` in a new session; with ``cancel``, the poller's request arrives
    as soon as it runs."""

    def __init__(self, spool: Spool, code: str, cancel: bool) -> None:
        self.spool, self.code, self.cancel = spool, code, cancel
        self.handles: list[ChildHandle] = []

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
        proc = subprocess.Popen(
            [sys.executable, "-c", self.code], start_new_session=True, stdout=subprocess.PIPE
        )
        if READY in self.code:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        me = identify(proc.pid)
        assert me is not None
        write_status(run_dir, {"phase": "running", "shim": me.to_json(), "flow": me.to_json()})
        if self.cancel:
            # run_dir is runs/<id>/<claim>/: one execution's folder.
            assert run_dir.name == "claim-1"
            self.spool.request_cancel(run_dir.parent.name, "claim-1", "Cancelling in Prefect")
        handle = ChildHandle(proc)
        self.handles.append(handle)
        return handle


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_worker(
    spool: Spool, client: WorkerClient, launcher: ChildLauncher, grace: float = 5.0
) -> str:
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id="w1",
        flow_python=sys.executable,
        pool=POOL,
        cancel_grace=grace,
        cancel_watch=0.05,
    )
    worker = Worker(config, client, spool, Registry(spool.root), launcher, environ={})
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    worker.handle(lease)
    return run_id


def outcome(spool: Spool, run_id: str) -> str:
    note: str = json.loads((spool.dir(DONE) / f"{run_id}.outcome").read_bytes())["outcome"]
    return note


def test_worker_stops_a_cancelled_run_with_sigterm_and_reports_cancelled(spool: Spool) -> None:
    client = WorkerClient(state="CRASHED")  # what the engine reports on SIGTERM
    launcher = ChildLauncher(spool, SLEEPER, cancel=True)
    run_id = run_worker(spool, client, launcher)
    assert launcher.handles[0].proc.returncode == -signal.SIGTERM
    assert outcome(spool, run_id) == "cancelled"
    [(state, force)] = client.proposed
    assert state["type"] == "CANCELLED" and force  # over the engine's Crashed
    assert state["message"] == (
        "Cancelled: the flow run's process was stopped by agent worker w1 (SIGTERM)"
    )


def test_worker_kills_a_flow_ignoring_sigterm_after_the_grace_period(spool: Spool) -> None:
    client = WorkerClient(state="CANCELLING")
    launcher = ChildLauncher(spool, STUBBORN, cancel=True)
    run_id = run_worker(spool, client, launcher, grace=1.0)
    assert launcher.handles[0].proc.returncode == -signal.SIGKILL
    assert outcome(spool, run_id) == "cancelled"
    [(state, _)] = client.proposed
    assert state["message"].endswith("(SIGTERM, then SIGKILL after 1 s)")


def test_worker_keeps_a_cancelled_state_the_engine_reported(spool: Spool) -> None:
    client = WorkerClient(state="CANCELLED")
    launcher = ChildLauncher(spool, SLEEPER, cancel=True)
    run_id = run_worker(spool, client, launcher)
    assert launcher.handles[0].proc.returncode == -signal.SIGTERM
    assert client.proposed == []
    assert outcome(spool, run_id) == "cancelled"


def test_worker_without_a_cancel_request_lets_the_flow_finish(spool: Spool) -> None:
    client = WorkerClient(state="COMPLETED")
    launcher = ChildLauncher(spool, "import time; time.sleep(0.3)", cancel=False)
    run_id = run_worker(spool, client, launcher)
    assert launcher.handles[0].proc.returncode == 0
    assert client.proposed == []
    assert outcome(spool, run_id) == "completed"


def test_worker_does_not_start_a_run_cancelled_before_it_started(spool: Spool) -> None:
    client = WorkerClient(state="CANCELLING")
    launcher = ChildLauncher(spool, SLEEPER, cancel=False)
    config = WorkerConfig(
        api=ApiSettings(url=URL), spool_dir=spool.root, worker_id="w1", flow_python=sys.executable
    )
    worker = Worker(config, client, spool, Registry(spool.root), launcher, environ={})
    run_id = spool_run(spool)
    lease = spool.take()
    assert lease is not None
    spool.request_cancel(run_id, "claim-1", "Cancelling in Prefect")
    worker.handle(lease)
    assert launcher.handles == []
    [(state, force)] = client.proposed
    assert state["type"] == "CANCELLED" and force
    assert state["message"] == "Cancelled by agent worker w1 before it started"
    assert outcome(spool, run_id) == "cancelled"


def test_process_ended_while_run_is_cancelling_is_cancelled_not_crashed(spool: Spool) -> None:
    """E.g. the engine, refused Running because the run is Cancelling, exits at once."""
    client = WorkerClient(state="CANCELLING")
    launcher = ChildLauncher(spool, "pass", cancel=False)
    run_id = run_worker(spool, client, launcher)
    [(state, _)] = client.proposed
    assert state["type"] == "CANCELLED"
    assert outcome(spool, run_id) == "cancelled"


# -- signalling only the recorded process -------------------------------------------------


def test_signal_run_never_signals_a_process_that_only_reuses_a_recorded_pid(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    children.append(proc)
    real = identify(proc.pid)
    assert real is not None
    impostor = ProcessId(real.pid, real.start + 1, real.boot)  # same pid, another process
    write_status(tmp_path, {"phase": "running", "shim": impostor.to_json(), "flow": None})
    assert signal_run(tmp_path, signal.SIGTERM) is None
    assert proc.poll() is None  # untouched
    write_status(tmp_path, {"phase": "running", "shim": real.to_json(), "flow": None})
    assert signal_run(tmp_path, signal.SIGTERM) == real
    assert proc.wait(10) == -signal.SIGTERM


def test_signal_run_falls_back_to_the_flows_group_when_the_shim_is_gone(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """An adopted run: its shim died (recorded identity no longer alive); the flow lives
    on in the group the shim led, with a child of its own."""
    code = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); {SLEEPER}"
    )
    flow = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    children.append(flow)
    flow_id = identify(flow.pid)
    assert flow_id is not None
    dead_shim = ProcessId(flow_id.pid, flow_id.start - 1, flow_id.boot)
    status: dict[str, object] = {
        "phase": "running",
        "shim": dead_shim.to_json(),
        "flow": flow_id.to_json(),
    }
    write_status(tmp_path, status)
    assert json.loads((tmp_path / STATUS_FILE).read_text())["flow"] == flow_id.to_json()
    assert signal_run(tmp_path, signal.SIGKILL) == flow_id
    assert flow.wait(10) == -signal.SIGKILL
