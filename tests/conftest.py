"""Fixtures shared by the integration and conformance suites: one Prefect server per
session (both suites use the same one); per test a pool, a spool and processes that are
all killed by pid at teardown, pass or fail.

The names other modules import (AUTH, OWN_AUTH, Agent, executions, ...) are also
re-exported by tests/integration/conftest.py, so `from tests.integration.conftest import
Agent` keeps working. Fixture functions are defined here only: a fixture defined (or
imported) in two conftest files would be two fixtures, and a session-scoped server per
directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.api.client import PrefectClient
from agent.settings.config import ApiSettings
from examples import demo
from tests.integration import cgroupfs
from tests.integration.harness import (
    BIN,
    REPO,
    PrefectServer,
    Procs,
    Supervisor,
    free_port,
    prefect_server,
)
from tests.integration.postgres import Cluster, pg_bin, postgres_cluster

BACKENDS = ("sqlite", "postgresql")
LAUNCHES = ("warm", "cold")
AUTH = "admin:s3cret-auth-value"  # the server requires it: tests also prove it never leaks
FLOWS_DIR = REPO / "tests" / "flows"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home, AUTH) as url:
        yield url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster per session (Debian's package; .ci/run installs it)."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory, pg_cluster: Cluster) -> Iterator[str]:
    """A second session server, on PostgreSQL: the backend a fleet uses."""
    home = tmp_path_factory.mktemp("prefect-pg-home")
    with prefect_server(home, AUTH, pg_cluster.create_database("prefect")) as url:
        yield url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `backends` run once on each server backend (SQLite, PostgreSQL)."""
    if metafunc.definition.get_closest_marker("backends") is not None:
        metafunc.parametrize("backend", BACKENDS, indirect=True)
    # Every other test runs with the agent's default launch (warm): the cold path keeps
    # these of its own.
    if metafunc.definition.get_closest_marker("launches") is not None:
        metafunc.parametrize("launch", LAUNCHES, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The Prefect server's database: "sqlite" unless the test is marked `backends`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def launch(request: pytest.FixtureRequest) -> str | None:
    """The workers' --launch: the agent's default unless the test is marked `launches`."""
    found = getattr(request, "param", None)
    return None if found is None else str(found)


@pytest.fixture(scope="session")
def client(server_url: str) -> PrefectClient:
    return session_client(server_url)


@dataclass
class Agent:
    """One test's world: pool, spool, run dir, and the environment its processes get."""

    pool: str
    spool: Path
    run_dir: Path
    env: dict[str, str]
    procs: Procs
    client: PrefectClient
    tmp: Path

    def deploy(
        self, entry: str, job_variables: dict[str, object] | None = None, name: str = "test"
    ) -> str:
        return demo.ensure_deployment(
            self.client,
            self.pool,
            entry,
            f"agent_test_flows.py:{entry}",
            FLOWS_DIR,
            name=name,
            job_variables=job_variables,
        )

    def run(
        self,
        deployment_id: str,
        parameters: dict[str, object] | None = None,
        job_variables: dict[str, object] | None = None,
    ) -> str:
        return demo.create_run(self.client, deployment_id, parameters, job_variables)

    def wait(self, run_ids: list[str], timeout: float = 120) -> dict[str, dict[str, object]]:
        return demo.wait_final(self.client, run_ids, timeout)

    def supervisor(self, workers: int = 2, **env: str) -> Supervisor:
        sup = Supervisor(
            self.procs, self.run_dir, {**self.env, "AGENT_WORKERS": str(workers), **env}
        )
        sup.start()
        return sup

    def start_poller(
        self,
        *args: str,
        name: str = "poller",
        spool: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        # Each hand-started poller serves on a port of its own.
        own = {"AGENT_ADDRESS": f"http://127.0.0.1:{free_port()}", **(env or {})}
        self.procs.start(
            name, ["agent", "local", "start", "--spool", str(spool or self.spool), *args], own
        )

    def start_worker(
        self,
        *args: str,
        name: str = "worker",
        spool: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.procs.start(
            name,
            ["agent", "worker", "--spool", str(spool or self.spool), "--worker-id", name, *args],
            env,
        )

    def states(self, run_id: str) -> list[str]:
        history = self.client.request("states", "GET", f"/flow_run_states/?flow_run_id={run_id}")
        return [s["type"] for s in sorted(history, key=lambda s: s["timestamp"])]


def session_client(url: str) -> PrefectClient:
    # The tests' own calls (create, wait) ride out a stall of the shared server (one
    # SQLite read once took over 30 s in CI); the agent under test keeps its defaults.
    return PrefectClient(
        ApiSettings(url=url, auth_string=AUTH, read_timeout=60.0, retry_deadline=120.0)
    )


@pytest.fixture
def agent(
    backend: str, launch: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Agent]:
    if backend == "postgresql":
        server_url = str(request.getfixturevalue("pg_server_url"))
        client = session_client(server_url)
    else:
        server_url = str(request.getfixturevalue("server_url"))
        client = request.getfixturevalue("client")
    pool = f"test-{uuid.uuid4().hex[:10]}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": server_url,
        "PREFECT_API_AUTH_STRING": AUTH,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "AGENT_POOL": pool,
        "AGENT_SPOOL_DIR": str(tmp_path / "spool"),
        "AGENT_RUN_DIR": str(run_dir),
        "AGENT_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "AGENT_LOG_LEVEL": "DEBUG",
        **({"AGENT_LAUNCH": launch} if launch else {}),
    }
    cgroup_root = cgroupfs.writable_root()  # each test's runs in cgroups of its own
    if cgroup_root is not None:
        env["AGENT_CGROUP_ROOT"] = str(cgroup_root)
    procs = Procs(env, tmp_path)
    demo.ensure_pool(client, pool)
    world = Agent(pool, tmp_path / "spool", run_dir, env, procs, client, tmp_path)
    try:
        yield world
    finally:
        Supervisor(procs, run_dir, env).shutdown()
        procs.close()
        if cgroup_root is not None:
            cgroupfs.remove_tree(cgroup_root)


OWN_AUTH = "admin:own-server-auth"


@pytest.fixture
def own_server(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[PrefectServer]:
    """A Prefect server for one test, which it may stop and start again (same port, same
    database): stopping the session's server would fail every other test. On PostgreSQL
    it has a database of its own in the session's cluster."""
    home = tmp_path / "own-prefect-home"
    home.mkdir()
    database = None
    if backend == "postgresql":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        database = cluster.create_database(f"own_{uuid.uuid4().hex[:12]}")
    server = PrefectServer(home, OWN_AUTH, port=free_port(), database=database)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "executions.txt"
    path.touch()
    return path


def executions(marker: Path) -> list[str]:
    return [line for line in marker.read_text().splitlines() if line]


Factory = Callable[..., Agent]
