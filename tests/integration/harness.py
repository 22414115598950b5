"""Real processes for integration tests: a Prefect server, agents, supervisord.

Every process a test starts carries LOCAL_AGENT_TEST_TAG=<unique> in its environment
(flow runs inherit it), so teardown finds and kills each one by pid, whatever state
the test left them in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TAG = "LOCAL_AGENT_TEST_TAG"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def tagged_pids(tag: str) -> list[int]:
    needle = f"{TAG}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_tagged(tag: str) -> list[int]:
    """SIGKILL every process carrying ``tag``; returns the pids it found."""
    pids = tagged_pids(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def cmdlines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


class Procs:
    """Processes started for one test, all tagged; ``close`` kills what is left."""

    def __init__(self, base_env: dict[str, str], logdir: Path) -> None:
        self.tag = uuid.uuid4().hex
        self.env = {**base_env, TAG: self.tag, "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.logdir = logdir
        self.popens: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            list(argv),
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self.popens.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        kill_tagged(self.tag)
        for proc in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


class Supervisor:
    """supervisord with the repository's supervisord.conf (configured by environment), or
    with another configuration file such as the output of `agent local install`."""

    def __init__(
        self, procs: Procs, run_dir: Path, env: dict[str, str], conf: Path | None = None
    ) -> None:
        self.procs, self.run_dir = procs, run_dir
        self.env = env
        self.conf = str(conf or REPO / "supervisord.conf")

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.procs.run(["supervisorctl", "-c", self.conf, *args], self.env, timeout)

    def start(self) -> None:
        result = self.procs.run(["supervisord", "-c", self.conf], self.env)
        assert result.returncode == 0, result.stderr + result.stdout
        wait_for((self.run_dir / "supervisor.sock").exists, 10, "supervisord's socket")

    def status(self) -> dict[str, str]:
        out = self.ctl("status").stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}

    def log(self, program: str) -> str:
        path = self.run_dir / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def shutdown(self) -> None:
        pidfile = self.run_dir / "supervisord.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text())
        self.ctl("shutdown", timeout=30)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "supervisord to exit")


def mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def remount(path: Path, mode: str) -> None:
    """``mount -o remount,ro|rw``; retried, as a probe write in flight makes it busy."""
    deadline = time.monotonic() + 10
    while True:
        result = subprocess.run(
            ["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True
        )
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"mount -o remount,{mode} {path}: {result.stderr}")
        time.sleep(0.1)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: 16m, 1m) at ``path`` (created), unmounted on
    the way out, pass or fail (lazily if still busy). Skips the test without root or
    where tmpfs cannot be mounted. Enter it before starting processes that use it, so
    that they are gone by the time it is unmounted."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("a filesystem of the test's own needs root (mount -t tmpfs)")
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)
        assert not mounted(path)


class PrefectServer:
    """A real Prefect 3.8.8 server on a loopback port with its own PREFECT_HOME, that a
    test can stop and start again on the same port and home (the SQLite database is in
    the home, so its data persists). Stopping kills the server's process group by pid."""

    def __init__(
        self, home: Path, auth: str, port: int | None = None, database: str | None = None
    ) -> None:
        self.home, self.auth = home, auth
        self.database = database  # a PostgreSQL URL; None: SQLite in the home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> str:
        """Start the server and wait until it answers /health; returns the API URL."""
        assert self.proc is None, "already started"
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_API_AUTH_STRING": self.auth,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": "",
        }
        if self.database:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database
        with open(self.home / "server.log", "ab") as log:
            proc = self.proc = subprocess.Popen(
                [
                    str(BIN / "prefect"),
                    *("server", "start", "--host", "127.0.0.1", "--port", str(self.port)),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        import requests

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"Prefect server exited: {self.log()}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.url}/health", timeout=2).status_code == 200
            return False

        try:
            wait_for(up, timeout, "the Prefect server")
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, grace: float = 20) -> None:
        """TERM the server's process group, KILL it after ``grace`` seconds; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # The group may outlive its leader (a child that ignored TERM): no survivors.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def prefect_server(home: Path, auth: str, database: str | None = None) -> Iterator[str]:
    """A real Prefect 3.8.8 server on a free loopback port with its own PREFECT_HOME
    (and, with ``database``, on that PostgreSQL database)."""
    server = PrefectServer(home, auth, database=database)
    try:
        yield server.start()
    finally:
        server.stop()


def execution(spool: Path, run_id: str) -> Path:
    """The newest execution folder of a run (``runs/<id>/<claim>/``: output log, status);
    ``runs/<id>/<missing>`` when it has none yet, so reads of it fail as a missing file."""
    folders = [p for p in (spool / "runs" / run_id).glob("*") if p.is_dir()]
    if not folders:
        return spool / "runs" / run_id / "none-yet"
    return max(folders, key=lambda p: p.stat().st_mtime)
