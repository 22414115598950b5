"""What the conformance tests share: a small REST client of their own (so that they read
the server the way an operator would, not through the agent's code), deployments of the
flows in tests/flows/conformance_flows.py, and readers of state histories and of the
flows' marker files.

A state history is the list of ``(type, name)`` of every state the server recorded for a
flow run (``GET /flow_run_states/?flow_run_id=``), oldest first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from tests.conftest import FLOWS_DIR, Agent
from tests.integration.harness import wait_for

FLOWS_FILE = "conformance_flows.py"
TRANSIENT_SECONDS = 30.0
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})

History = list[tuple[str, str]]
Json = dict[str, Any]

# Histories the tests expect, spelled once.
SCHEDULED = ("SCHEDULED", "Scheduled")
LATE = ("SCHEDULED", "Late")
PENDING = ("PENDING", "Pending")
RUNNING = ("RUNNING", "Running")
COMPLETED = ("COMPLETED", "Completed")
FAILED = ("FAILED", "Failed")
CRASHED = ("CRASHED", "Crashed")
CANCELLING = ("CANCELLING", "Cancelling")
CANCELLED = ("CANCELLED", "Cancelled")
AWAITING_RETRY = ("SCHEDULED", "AwaitingRetry")
AWAITING_SLOT = ("SCHEDULED", "AwaitingConcurrencySlot")
SUSPENDED = ("PAUSED", "Suspended")
PAUSED = ("PAUSED", "Paused")
RESUMING = ("SCHEDULED", "Resuming")
RAN = [SCHEDULED, PENDING, RUNNING, COMPLETED]


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def api_time(value: str) -> float:
    """Seconds since the epoch of a time the API wrote."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


class Api:
    """The Prefect REST API, as curl would see it: JSON in, JSON out, errors raised."""

    def __init__(self, url: str, auth: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        user, _, password = auth.partition(":")
        self.session.auth = (user, password)

    def call(self, method: str, path: str, body: object = None) -> Any:
        """One call; a 502/503/504 (a busy SQLite answers 503 on a loaded machine) is
        tried again for up to TRANSIENT_SECONDS, as any client of the server would."""
        deadline = time.monotonic() + TRANSIENT_SECONDS
        while True:
            response = self.session.request(method, f"{self.url}{path}", json=body, timeout=30)
            if response.status_code not in (502, 503, 504) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        return response.json() if response.content else None

    def status(self, method: str, path: str) -> int:
        return self.session.request(method, f"{self.url}{path}", timeout=30).status_code

    def flow_run(self, run_id: str) -> Json:
        run: Json = self.call("GET", f"/flow_runs/{run_id}")
        return run

    def runs(self, run_ids: list[str]) -> dict[str, Json]:
        body = {"flow_runs": {"id": {"any_": run_ids}}, "limit": 200}
        return {r["id"]: r for r in self.call("POST", "/flow_runs/filter", body)}

    def states(self, run_id: str) -> list[Json]:
        found: list[Json] = self.call("GET", f"/flow_run_states/?flow_run_id={run_id}")
        return sorted(found, key=lambda s: api_time(s["timestamp"]))

    def history(self, run_id: str) -> History:
        return [(s["type"], s["name"]) for s in self.states(run_id)]

    def set_state(self, run_id: str, state: Json, force: bool = True) -> Json:
        body = {"state": state, "force": force}
        answer: Json = self.call("POST", f"/flow_runs/{run_id}/set_state", body)
        return answer

    def cancel(self, run_id: str) -> Json:
        """What the UI's Cancel button does."""
        return self.set_state(run_id, {"type": "CANCELLING", "name": "Cancelling"})

    def retry(self, run_id: str) -> Json:
        """What the UI's Retry button does to a final run."""
        state = {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}
        return self.set_state(run_id, state)

    def resume(self, run_id: str) -> Json:
        """What prefect.flow_runs.resume_flow_run sends."""
        answer: Json = self.call("POST", f"/flow_runs/{run_id}/resume", {"run_input": None})
        return answer

    def wait_final(self, run_ids: list[str], timeout: float) -> dict[str, Json]:
        """Every run's state once all are final; fails naming the ones that are not."""
        deadline = time.monotonic() + timeout
        while True:
            states = {rid: run.get("state") or {} for rid, run in self.runs(run_ids).items()}
            if all(states.get(rid, {}).get("type") in FINAL for rid in run_ids):
                return states
            if time.monotonic() > deadline:
                late = {rid: (s.get("type"), s.get("name")) for rid, s in states.items()}
                raise AssertionError(f"not final after {timeout:.0f}s: {late}")
            time.sleep(0.5)

    def wait_state(self, run_id: str, kind: str, name: str | None, timeout: float) -> Json:
        """The run's state once its type (and name, if given) is as asked."""

        def reached() -> bool:
            state = self.flow_run(run_id).get("state") or {}
            return state.get("type") == kind and name in (None, state.get("name"))

        wait_for(reached, timeout, f"flow run {run_id} to be {kind} {name or ''}")
        state: Json = self.flow_run(run_id)["state"]
        return state


@dataclass(frozen=True)
class Event:
    run_id: str
    event: str
    pid: int
    at: float


def events(marker: Path) -> list[Event]:
    found = []
    for line in marker.read_text().splitlines():
        run_id, event, pid, at = line.split()
        found.append(Event(run_id, event, int(pid), float(at)))
    return found


def starts(marker: Path, run_id: str) -> list[Event]:
    """One per time the flow's code began for this run."""
    return [e for e in events(marker) if e.run_id == run_id and e.event == "start"]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of ``(begin, end)`` spans open at one instant."""
    edges = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    most = open_now = 0
    for _, step in edges:  # at a tie an end (-1) sorts first: touching spans do not overlap
        open_now += step
        most = max(most, open_now)
    return most


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a process (alive, holding its locks, doing nothing); SIGCONT on the way out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class World:
    """One conformance test's world: the shared fixture's pool, spool and processes, a
    REST client, and a marker file the flows write to."""

    agent: Agent
    api: Api
    marker: Path
    # For every agent process, over the fixture's environment (e.g. another server's URL).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        return self.agent.pool

    def deploy(self, flow: str, job_variables: Json | None = None, **options: object) -> str:
        """A deployment of ``conformance_flows.py:<flow>`` in this test's pool, named after
        the pool (deployments are upserted by flow and name: no test may share one).
        ``options`` go into the body as they are (concurrency_limit, schedules, ...)."""
        flow_id = self.api.call("POST", "/flows/", {"name": flow})["id"]
        body: Json = {
            "name": self.pool,
            "flow_id": flow_id,
            "work_pool_name": self.pool,
            "entrypoint": f"{FLOWS_FILE}:{flow}",
            "pull_steps": [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(FLOWS_DIR)}}
            ],
            "job_variables": job_variables or {},
            "enforce_parameter_schema": False,
            # Runs the scheduler makes get the deployment's parameters.
            "parameters": {"marker": str(self.marker)},
            **options,
        }
        return str(self.api.call("POST", "/deployments/", body)["id"])

    def run(
        self,
        deployment_id: str,
        parameters: Json | None = None,
        scheduled: datetime | None = None,
        job_variables: Json | None = None,
    ) -> str:
        body: Json = {
            "parameters": {"marker": str(self.marker), **(parameters or {})},
            "job_variables": job_variables or {},
        }
        if scheduled is not None:
            body["state"] = {
                "type": "SCHEDULED",
                "name": "Scheduled",
                "state_details": {"scheduled_time": iso(scheduled)},
            }
        path = f"/deployments/{deployment_id}/create_flow_run"
        return str(self.api.call("POST", path, body)["id"])

    def start(self, workers: int = 2) -> None:
        """The agent: its poller and ``workers`` workers, as the harness's processes (the
        integration suite covers supervisord; a test here needs no 3 s startsecs), with
        every worker registered and the endpoint serving."""
        self.agent.start_poller(env={**self.env, "AGENT_ADDRESS": self.address})
        for n in range(workers):
            self.agent.start_worker(name=f"worker_{n}", env=self.env)
        wait_for(lambda: len(self.worker_pids()) == workers, 60, f"{workers} workers registered")
        wait_for(self._serving, 30, "the agent's endpoint")

    @property
    def address(self) -> str:
        return self.agent.env["AGENT_ADDRESS"]

    def _serving(self) -> bool:
        try:
            requests.get(f"{self.address}/api/health", timeout=3)
        except requests.ConnectionError:
            return False
        return True

    def poke(self) -> None:
        """Poll now (GET /api/poke): a test whose rule is not about claim latency need
        not wait for an idle poller's backoff."""
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{self.address}/api/poke", timeout=3)

    def worker_pids(self) -> dict[str, int]:
        """Live registered workers by id, from the spool's registry."""
        found = {}
        for path in (self.agent.spool / "workers").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = int(json.loads(path.read_text())["pid"])
                if pid_alive(pid):
                    found[path.stem] = pid
        return found

    def settled(self, run_id: str, timeout: float = 30) -> None:
        """Wait until a worker has settled the run (its spec is in the spool's done/)."""
        done = self.agent.spool / "done" / f"{run_id}.json"
        wait_for(done.exists, timeout, f"flow run {run_id} to be settled by its worker")

    def history(self, run_id: str) -> History:
        return self.api.history(run_id)

    def starts(self, run_id: str) -> list[Event]:
        return starts(self.marker, run_id)

    def events(self, run_id: str | None = None) -> list[Event]:
        """What the flows wrote: of one run, or of all."""
        return [e for e in events(self.marker) if run_id in (None, e.run_id)]


def in_the_past(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
