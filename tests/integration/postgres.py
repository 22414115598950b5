"""A real PostgreSQL cluster for the tests, from the host's Debian package: its own data
directory in a temp dir, run as the unprivileged `postgres` user (or this user, when not
root), on a free loopback port. Stopped, and its processes killed by pid, at the end."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.integration.harness import free_port, wait_for


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (initdb, pg_ctl), if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return found[-1].parent if found else None


class Cluster:
    def __init__(self) -> None:
        binary = pg_bin()
        if binary is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = binary
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="la-pg-"))
        self.data = self.base / "data"
        # initdb refuses root: the cluster runs as the `postgres` system user.
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            user=self.user if os.geteuid() == 0 else None,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.base,
            check=True,
        )

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.base / "postgres.log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        wait_for(self.ready, 30, "PostgreSQL to accept connections")

    def ready(self) -> bool:
        probe = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        )
        return probe.returncode == 0

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URL for Prefect (asyncpg ships with Prefect)."""
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
             "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def connections(self) -> int:
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tA",
             "-c", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return int(out.stdout.strip() or 0)

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        pid = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the postmaster; its children exit with it
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
