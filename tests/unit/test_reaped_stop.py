"""A host that was only cut off from Prefect (a network partition), whose running flow
another agent marked Crashed meanwhile (host loss, agent/core/reap.py): when its poller
reaches Prefect again it asks the run's worker to stop the flow's processes, and the
worker proposes nothing after, so the run stays Crashed. Real child processes, a real
spool, fake API clients (tests/unit/test_cancel.py has the harness)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.core import reap
from agent.core.reap import Lost
from agent.core.states import RunState, StateType
from agent.spool.moves import CANCEL, CANCEL_FILE, CUR, LOST, RUNS, Spool
from tests.unit.test_cancel import (
    SLEEPER,
    ChildHandle,
    ChildLauncher,
    PollerClient,
    WorkerClient,
    make_poller,
    outcome,
    run_worker,
    spool_run,
)

REAPED = reap.proposal(Lost("r", "s", "a1", "h1", 700.0), ("a2", "h2"), 600.0).message
ENGINE_CRASH = "Execution was aborted by an interrupt signal."


# -- the rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (RunState(StateType.CRASHED, "Crashed", REAPED), True),
        (RunState(StateType.CRASHED, "Crashed", ENGINE_CRASH), False),
        (RunState(StateType.CRASHED, "Crashed", ""), False),
        (RunState(StateType.FAILED, "Failed", REAPED), False),
        (RunState(StateType.CANCELLING, "Cancelling", REAPED), False),
        (None, False),
    ],
)
def test_only_a_reapers_crashed_is_reaped(state: RunState | None, expected: bool) -> None:
    assert reap.reaped(state) is expected


# -- the spool's request ------------------------------------------------------------------


def test_a_lost_request_says_why_and_is_not_a_cancellation(spool: Spool) -> None:
    run_id = spool_run(spool)
    assert spool.request_cancel(run_id, "claim-1", "reaped", why=LOST)
    assert spool.stop_requested(run_id, "claim-1") == LOST
    assert not spool.cancel_requested(run_id, "claim-1")
    assert spool.stop_requested(run_id, "claim-2") is None  # another claim's: not asked
    assert not spool.request_cancel(run_id, "claim-1", "again", why=LOST)  # idempotent
    # A Cancelling seen later for the same claim becomes a cancellation.
    assert spool.request_cancel(run_id, "claim-1", "Cancelling in Prefect")
    assert spool.stop_requested(run_id, "claim-1") == CANCEL


def test_a_request_written_before_why_existed_is_a_cancellation(spool: Spool) -> None:
    run_id = spool_run(spool)
    path = spool.dir(RUNS) / run_id / CANCEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"claim": "claim-1", "reason": "Cancelling in Prefect", "at": 1}')
    assert spool.cancel_requested(run_id, "claim-1")


# -- the poller ---------------------------------------------------------------------------


class CrashedClient(PollerClient):
    """Shows ``crashed`` (run id -> message) Crashed, the others as PollerClient does."""

    def __init__(self, crashed: dict[str, str]) -> None:
        super().__init__()
        self.crashed = crashed

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "cancelling_flow_runs":
            self.calls.append((call, path, json))
            asked = json["flow_runs"]["id"]["any_"]
            return [
                {"id": i, "state": {"type": "CRASHED", "message": self.crashed[i]}}
                for i in asked
                if i in self.crashed
            ]
        return super().request(call, method, path, json, deadline)


def test_the_poller_asks_the_worker_to_stop_a_running_run_another_agent_reaped(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    reaped_running = spool_run(spool)
    lease = spool.take()
    assert lease is not None and lease.run_id == reaped_running
    crashed_running = spool_run(spool)
    other = spool.take()
    assert other is not None and other.run_id == crashed_running
    reaped_waiting = spool_run(spool)
    client = CrashedClient(
        {reaped_running: REAPED, crashed_running: ENGINE_CRASH, reaped_waiting: REAPED}
    )
    poller = make_poller(spool, client)
    with caplog.at_level(logging.WARNING):
        poller.cancellations.run()

    [(_, _, body)] = client.named("cancelling_flow_runs")
    assert body["flow_runs"]["state"] == {"type": {"any_": ["CANCELLING", "CRASHED"]}}
    assert spool.stop_requested(reaped_running, "claim-1") == LOST
    assert (spool.dir(CUR) / f"{reaped_running}.json").exists()  # its worker settles it
    # The engine's own Crashed: its process is ending anyway; nothing asked.
    assert not (spool.dir(RUNS) / crashed_running).exists()
    # Waiting: its worker's look before it starts finds it final and never starts it.
    assert not (spool.dir(RUNS) / reaped_waiting).exists()
    assert client.named("set_flow_run_state") == []  # it stays Crashed
    assert (
        f"flow run {reaped_running} was marked Crashed by another agent while agent a1 was "
        "cut off from Prefect: asked its worker to stop it"
    ) in caplog.messages
    lease.release()
    other.release()


# -- the worker ---------------------------------------------------------------------------


class LostLauncher(ChildLauncher):
    """Starts the flow; the poller's request to stop it, as lost, arrives at once."""

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
        handle = super().start(argv, env, cwd, run_dir, keep_fds, echo_prefix, cgroups)
        self.spool.request_cancel(run_dir.parent.name, run_dir.name, "reaped", why=LOST)
        return handle


def test_the_worker_stops_a_reaped_run_and_reports_nothing(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    client = WorkerClient(state="CRASHED")  # the reaper's, still there after SIGTERM
    launcher = LostLauncher(spool, SLEEPER, cancel=False)
    with caplog.at_level(logging.INFO):
        run_id = run_worker(spool, client, launcher)
    assert launcher.handles[0].proc.returncode == -signal.SIGTERM
    assert client.proposed == []  # no Cancelled forced over it, no Crashed of its own
    assert outcome(spool, run_id) == "crashed"
    assert any(
        m.startswith(
            f"flow run {run_id} was marked Crashed by another agent while this host was cut "
            "off: SIGTERM sent"
        )
        for m in caplog.messages
    ), caplog.messages
