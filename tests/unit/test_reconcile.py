"""Stranded runs (the poller's "stranded runs" duty, agent/poller/stranded.py): runs
Prefect shows Pending or Running for this agent on this host that the spool has no spec
for. A real Poller and a real Spool in tmp_path; a fake API client that answers
/flow_runs/filter with what the test lists (unfiltered, as a server that ignored the
filter would) and records every call."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.core.errors import ApiError, NotFoundError, SpoolError, TransientApiError
from agent.core.jobvars import base_job_template
from agent.core.spec import JobSpec, loads
from agent.poller.loop import Poller
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool import containment_state
from agent.spool.moves import CUR, DONE, FAILED, NEW, RUNS, TMP, Spool
from agent.worker import procid
from tests.unit.test_health import FakeRegistry

URL = "http://prefect.invalid/api"
POOL = "pool"
NAME = "agent-7"
HOST = "host-a"
DEPLOYMENT = "d0000000-0000-4000-8000-000000000001"
OLD = 3600.0  # seconds since a stranded run's state was set: well past the threshold


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat()


def flow_run(
    state_type: str = "PENDING",
    age: float = OLD,
    transition_id: str | None = "tid-of-our-claim",
    worker: str | None = NAME,
    host: str | None = HOST,
    pool: str = POOL,
    **fields: Any,
) -> dict[str, Any]:
    """A flow run as POST /flow_runs/filter returns it (the shape checked on a 3.8.8 server)."""
    run_id = str(uuid.uuid4())
    labels = {"prefect.flow.id": "f1", "prefect.deployment.id": DEPLOYMENT}
    if worker is not None:
        labels["prefect.worker.name"] = worker
    if host is not None:
        labels["local-agent.host"] = host
    labels["prefect.work-pool.name"] = pool
    return {
        "id": run_id,
        "name": "sleepy-otter",
        "deployment_id": DEPLOYMENT,
        "work_pool_name": pool,
        "labels": labels,
        "job_variables": {"env": {"RUN": "r"}},
        "next_scheduled_start_time": None,
        "expected_start_time": "2026-01-02T03:04:05.000006Z",
        "state_type": state_type,
        "state": {
            "type": state_type,
            "name": state_type.title(),
            "timestamp": iso(age),
            "state_details": {"flow_run_id": run_id, "transition_id": transition_id},
        },
        **fields,
    }


class FakeClient(PrefectClient):
    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.live: list[dict[str, Any]] = []  # what /flow_runs/filter answers, unfiltered
        self.deployments: dict[str, dict[str, Any]] = {
            DEPLOYMENT: {"id": DEPLOYMENT, "job_variables": {"env": {"DEP": "d", "RUN": "d"}}}
        }
        self.calls: list[tuple[str, str, Any]] = []
        self.filter_error: ApiError | None = None
        self.state_answer: dict[str, Any] = {"status": "ACCEPT"}

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, path, json))
        if call == "read_work_pool":
            template = base_job_template()
            template["variables"]["properties"]["working_dir"]["default"] = "/srv/flows"
            return {"name": POOL, "type": "local-agent", "base_job_template": template}
        if call == "filter_flow_runs":
            if self.filter_error is not None:
                raise self.filter_error
            return self.live[json["offset"] : json["offset"] + json["limit"]]
        if call == "read_deployment":
            found = self.deployments.get(path.rsplit("/", 1)[1])
            if found is None:
                raise NotFoundError(call, "HTTP 404: Deployment not found", 404)
            return found
        if call == "set_flow_run_state":
            return {**self.state_answer, "state": json["state"]}
        if call in ("get_scheduled_flow_runs", "cancelling_flow_runs"):
            return []
        return None

    def named(self, call: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == call]

    def states_set(self) -> dict[str, dict[str, Any]]:
        """Run id -> the state proposed for it."""
        return {
            path.split("/")[2]: body["state"] for _, path, body in self.named("set_flow_run_state")
        }


class World:
    def __init__(self, root: Path) -> None:
        self.client = FakeClient()
        self.spool = Spool(root / "spool")
        self.spool.ensure()
        config = PollerConfig(
            api=ApiSettings(url=URL),
            pool=POOL,
            spool_dir=self.spool.root,
            name=NAME,
            hostname=HOST,
            env_vars={"AGENT_ENV": "a"},
            import_paths=("/opt/libs",),
            show_flow_logs=True,
            cloud_logs=False,
        )
        self.poller = Poller(config, self.client, self.spool, FakeRegistry(idle=0))
        self.poller.claiming.setup_pool()

    def add(self, **kwargs: Any) -> str:
        run = flow_run(**kwargs)
        self.client.live.append(run)
        return str(run["id"])

    def spec_in(self, state: str, run_id: str) -> None:
        (self.spool.dir(state) / f"{run_id}.json").write_bytes(b"{}")

    def run_folder(self, run_id: str) -> None:
        (self.spool.dir(RUNS) / run_id).mkdir()


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty stand-in for /proc: no process runs any flow run unless a test says so."""
    path = tmp_path / "proc"
    path.mkdir()
    monkeypatch.setattr(procid, "PROC", path)
    return path


@pytest.fixture
def world(tmp_path: Path, proc: Path) -> World:
    return World(tmp_path)


def crash_message(run_id: str) -> str:
    return (
        f"Flow run {run_id} was claimed by agent {NAME} on {HOST}, which has no record of "
        "it running (spec lost); marked Crashed instead of running it again."
    )


def claimed_total() -> float:
    return REGISTRY.get_sample_value("agent_flow_runs_claimed_total") or 0.0


# -- what is done -------------------------------------------------------------------------


def test_a_never_started_pending_run_is_spooled_again_as_claim_would(world: World) -> None:
    run_id = world.add()
    before = claimed_total()
    world.poller.stranded.run()

    assert world.spool.run_ids(NEW) == [run_id]
    assert world.spool.run_ids(TMP) == []
    spec = loads(world.spool.read(NEW, run_id))
    pending_at = world.client.live[0]["state"]["timestamp"]
    assert spec == JobSpec(
        flow_run_id=run_id,
        pool=POOL,
        transition_id="tid-of-our-claim",  # the Pending's own: reconcile_tmp can settle it
        agent_name=NAME,
        flow_run_name="sleepy-otter",
        deployment_id=DEPLOYMENT,
        scheduled_start="2026-01-02T03:04:05.000006Z",  # expected_start_time
        claimed_at=datetime.fromisoformat(pending_at).timestamp(),  # when it was claimed
        # pool defaults < deployment < flow run, env merged key by key
        job_variables={
            "command": None,
            "env": {"DEP": "d", "RUN": "r"},
            "working_dir": "/srv/flows",
            "labels": [],
            "memory_limit": None,
            "cpu_limit": None,
            "pids_limit": None,
            "timeout_seconds": None,
        },
        env_vars={"AGENT_ENV": "a"},
        import_paths=["/opt/libs"],
        show_flow_logs=True,
        cloud_logs=False,
    )
    assert world.client.named("set_flow_run_state") == []  # still our Pending: no new claim
    assert claimed_total() == before  # counted once, when it was claimed


class RecordedRunLogs:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int]] = []

    def emit(self, flow_run_id: str, message: str, level: int = logging.INFO) -> None:
        self.lines.append((flow_run_id, message, level))

    def close(self, timeout: float = 2.0) -> None:
        pass


def test_with_cloud_logs_the_run_says_in_prefect_why_it_was_spooled_again(world: World) -> None:
    runlogs = RecordedRunLogs()
    config = replace(world.poller.s.config, cloud_logs=True)
    poller = Poller(config, world.client, world.spool, FakeRegistry(idle=0), runlogs)
    poller.claiming.setup_pool()
    run_id = world.add()
    poller.stranded.run()
    assert loads(world.spool.read(NEW, run_id)).cloud_logs is True
    assert runlogs.lines == [
        (
            run_id,
            f"Claimed by agent {NAME!r} on {HOST} but missing from its spool, and never "
            "started: spooled again",
            logging.WARNING,
        )
    ]


def test_a_pending_run_without_a_transition_id_gets_a_fresh_one(world: World) -> None:
    run_id = world.add(transition_id=None)
    world.poller.stranded.run()
    spec = loads(world.spool.read(NEW, run_id))
    assert uuid.UUID(spec.transition_id)


def test_a_pending_run_whose_deployment_is_gone_is_cancelled_not_spooled(world: World) -> None:
    run_id = world.add()
    world.client.deployments.clear()
    world.poller.stranded.run()
    assert world.spool.contains(run_id) is None
    assert world.client.states_set()[run_id]["type"] == "CANCELLED"


def test_a_pending_run_started_here_is_spooled_again_never_crashed(world: World) -> None:
    """`lifecycle.respool_stranded`: a process that ended while its run was still Pending
    never ran user code (the engine proposes Running before any), so the run is spooled
    again with its Pending's transition id, whether or not a process was started."""
    run_id = world.add()
    world.run_folder(run_id)  # a worker took it and started its process; the spec is lost
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []  # no Crashed, no new claim
    assert world.spool.run_ids(NEW) == [run_id]
    assert loads(world.spool.read(NEW, run_id)).transition_id == "tid-of-our-claim"


def test_a_running_run_without_a_spec_is_reported_crashed(world: World) -> None:
    run_id = world.add(state_type="RUNNING", transition_id=None)
    world.poller.stranded.run()
    assert world.client.states_set() == {
        run_id: {"type": "CRASHED", "name": "Crashed", "message": crash_message(run_id)}
    }
    assert world.spool.contains(run_id) is None  # never run again
    body = world.client.named("set_flow_run_state")[0][2]
    assert body["force"] is False  # a run that reached a final state meanwhile keeps it


def test_a_crash_report_the_server_aborts_is_fine(world: World) -> None:
    world.add(state_type="RUNNING")
    world.client.state_answer = {
        "status": "ABORT",
        "details": {"reason": "Run is already in terminal state COMPLETED."},
    }
    world.poller.stranded.run()  # no error


# -- what is left alone -------------------------------------------------------------------


@pytest.mark.parametrize("folder", [TMP, NEW, CUR, DONE, FAILED])
@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
def test_a_run_with_a_spec_in_any_folder_is_left_to_the_workers(
    world: World, folder: str, state_type: str
) -> None:
    run_id = world.add(state_type=state_type)
    world.spec_in(folder, run_id)
    world.run_folder(run_id)
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) == folder
    assert [world.spool.run_ids(f) for f in (TMP, NEW, CUR, DONE, FAILED)].count([run_id]) == 1


@pytest.mark.parametrize(
    "labels",
    [
        {"host": "host-b"},
        {"worker": "another-agent"},
        {"host": None},
        {"worker": None},
        {"worker": None, "host": None},
    ],
    ids=["other-host", "other-name", "no-host-label", "no-name-label", "unlabelled"],
)
@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
def test_a_run_of_another_agent_or_host_is_left_alone(
    world: World, labels: dict[str, Any], state_type: str
) -> None:
    run_id = world.add(state_type=state_type, **labels)
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) is None


def test_runs_the_filter_should_have_excluded_are_left_alone(world: World) -> None:
    """A retry waiting its turn (Scheduled) keeps our labels; another pool's run too."""
    world.add(state_type="SCHEDULED")
    world.add(state_type="COMPLETED")
    world.add(pool="other-pool")
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.run_ids(NEW) == []


@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
@pytest.mark.parametrize("age", [0.0, 30.0, 59.0, -120.0], ids=["now", "30s", "59s", "future"])
def test_a_run_whose_state_is_fresh_is_left_alone(
    world: World, state_type: str, age: float
) -> None:
    assert world.poller.s.config.stranded_after == defaults.STRANDED_AFTER_SECONDS == 60.0
    run_id = world.add(state_type=state_type, age=age)
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) is None


def test_a_state_just_past_the_threshold_is_acted_on(world: World) -> None:
    pending = world.add(age=61.0)
    running = world.add(state_type="RUNNING", age=61.0)
    world.poller.stranded.run()
    assert world.spool.run_ids(NEW) == [pending]
    assert list(world.client.states_set()) == [running]


def test_a_run_without_a_readable_state_time_is_left_alone(world: World) -> None:
    world.add()
    world.client.live[0]["state"]["timestamp"] = None
    world.poller.stranded.run()
    assert world.spool.run_ids(NEW) == []


@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
def test_a_run_a_live_process_on_this_host_runs_is_left_alone(
    world: World, proc: Path, state_type: str
) -> None:
    run_id = world.add(state_type=state_type)
    world.run_folder(run_id)
    flow = proc / "4242"
    flow.mkdir()
    (flow / "environ").write_bytes(f"HOME=/x\0PREFECT__FLOW_RUN_ID={run_id}\0PATH=/bin\0".encode())
    (proc / "self").mkdir()  # not a pid: skipped
    unreadable = proc / "4243"
    unreadable.mkdir()  # no environ file: another user's process, or gone
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) is None


@pytest.mark.parametrize("held", [True, False])
def test_a_running_run_whose_cgroup_holds_a_process_is_left_alone(
    world: World, tmp_path: Path, held: bool
) -> None:
    """Where runs have cgroups, a process in the run's cgroup (one that changed its
    environment, say) keeps the run alive: it is not reported Crashed."""
    run_id = world.add(state_type="RUNNING", transition_id=None)
    root = tmp_path / "cgroups" / "local-agent"
    run_cgroup = root / f"run-{run_id}-0123abcd"
    run_cgroup.mkdir(parents=True)
    (run_cgroup / "cgroup.procs").write_text("4242\n" if held else "")
    containment_state.record(world.spool.root, "v2", "test", "strict", [root])
    world.poller.stranded.run()
    crashed = world.client.named("set_flow_run_state")
    assert (crashed == []) is held


# -- the query and when it runs -----------------------------------------------------------


def test_one_filter_call_asks_for_pending_and_running_runs_of_the_pool(world: World) -> None:
    world.poller.stranded.run()
    calls = world.client.named("filter_flow_runs")
    assert len(calls) == 1
    _, path, body = calls[0]
    assert path == "/flow_runs/filter"
    assert body == {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
        "work_pools": {"name": {"any_": [POOL]}},
        "sort": "ID_DESC",
        "limit": 200,
        "offset": 0,
    }


def test_a_full_page_is_followed_by_the_next(world: World) -> None:
    for _ in range(defaults.STRANDED_PAGE):
        world.add(worker="someone-else")
    last = world.add()
    world.poller.stranded.run()
    offsets = [body["offset"] for _, _, body in world.client.named("filter_flow_runs")]
    assert offsets == [0, 200]
    assert world.spool.run_ids(NEW) == [last]


def test_first_tick_looks_then_only_every_few_minutes(world: World) -> None:
    world.poller.tick()
    assert len(world.client.named("filter_flow_runs")) == 1
    names = [c[0] for c in world.client.calls]
    assert names.index("filter_flow_runs") < names.index("get_scheduled_flow_runs")
    world.poller.tick()
    assert len(world.client.named("filter_flow_runs")) == 1
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_CHECK_SECONDS - 5 < due <= defaults.STRANDED_CHECK_SECONDS
    world.poller.duty("stranded runs").next_at = time.monotonic() - 1
    world.poller.tick()
    assert len(world.client.named("filter_flow_runs")) == 2


def test_a_refused_look_does_not_stop_polling_and_is_retried_sooner(world: World) -> None:
    world.client.filter_error = ApiError("filter_flow_runs", "HTTP 422: bad filter", 422)
    world.poller.tick()
    assert world.client.named("get_scheduled_flow_runs")  # the poll went on
    assert world.poller.s.last_error == "stranded runs: filter_flow_runs: HTTP 422: bad filter"
    assert world.poller.s.outage.down_since is None  # refused, not away
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_RETRY_SECONDS - 5 < due <= defaults.STRANDED_RETRY_SECONDS
    world.client.filter_error = None
    world.poller.duty("stranded runs").next_at = time.monotonic() - 1
    run_id = world.add()
    world.poller.tick()
    assert world.spool.run_ids(NEW) == [run_id]


def test_a_look_failing_for_an_outage_skips_the_claim_and_is_retried_sooner(
    world: World,
) -> None:
    """A 503 shows the API is away: the rest of the round's API calls would fail the same
    way, so the claim waits for the API's return; the look is retried sooner."""
    world.client.filter_error = TransientApiError("filter_flow_runs", "HTTP 503", 503)
    world.poller.tick()
    assert world.client.named("get_scheduled_flow_runs") == []
    assert world.poller.s.outage.down_since is not None
    assert world.poller.s.last_error == "stranded runs: filter_flow_runs: HTTP 503"
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_RETRY_SECONDS - 5 < due <= defaults.STRANDED_RETRY_SECONDS
    world.client.filter_error = None
    world.poller.duty("stranded runs").next_at = time.monotonic() - 1
    run_id = world.add()
    world.poller.tick()
    assert world.spool.run_ids(NEW) == [run_id]
    assert world.client.named("get_scheduled_flow_runs")
    assert world.poller.s.outage.down_since is None


def test_a_spool_that_cannot_be_written_is_reported_and_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = world.add()

    def full_disk(run_id: str, data: bytes) -> None:
        raise SpoolError(f"cannot write spec for flow run {run_id}: No space left on device")

    monkeypatch.setattr(world.spool, "write_ahead", full_disk)
    world.poller.tick()
    assert world.poller.s.spool_error and "No space left" in world.poller.s.spool_error
    assert world.client.named("get_scheduled_flow_runs")  # the poll went on
    assert world.spool.contains(run_id) is None
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_RETRY_SECONDS - 5 < due <= defaults.STRANDED_RETRY_SECONDS
