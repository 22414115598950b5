"""Warm launches: each worker keeps one warm process of the flow's interpreter with
Prefect imported (agent/worker/forkserver.py) and has it fork each run's shim and flow,
so no run pays ``import prefect`` again (about 1.2 s of CPU a run on a small host).

A run starts cold, through the ShimLauncher, and its "Process started" log line says why,
when agent/core/launch.py says a fork would not give it a cold start's view (it sets
``command``, or variables read at interpreter start), when the flow interpreter's
packages changed since the warm process started, or when the warm process is not
healthy (it died, has threads, or did not get ready). The warm process is started again
after ``recycle_after`` runs, and after a change or a failure (not more than once a
minute after a failure).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.core import launch
from agent.core.environment import build_argv
from agent.observe import metrics
from agent.worker import forkserver
from agent.worker.launcher import (
    ExitStatus,
    ShimHandle,
    ShimLauncher,
    exit_status,
    split_secrets,
)
from agent.worker.procid import ProcessId, identify

log = logging.getLogger(__name__)

AGENT_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding agent/
READY_SECONDS = 60.0  # importing Prefect takes 1-2 s; far longer on a loaded host
RETRY_SECONDS = 60.0  # after a warm process failed, cold starts meanwhile


class WarmError(Exception):
    """The warm process did not do what was asked: why, for the run's log line.
    ``failed``: it is at fault, and another is started only after RETRY_SECONDS."""

    def __init__(self, why: str, failed: bool = True) -> None:
        super().__init__(why)
        self.failed = failed


class WarmProcess:
    """One warm process and the worker's end of its control socket."""

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        mine, theirs = socket.socketpair()
        code = forkserver.BOOTSTRAP.format(root=AGENT_ROOT).replace(
            "f.main()", f"f.main({theirs.fileno()})"
        )
        try:
            self.proc = subprocess.Popen(
                [python, "-c", code],
                # Plugins' startup hooks run in each forked run, with its own settings.
                env={
                    **env,
                    forkserver.RUN_ID_VAR: forkserver.RUN_ID_SLOT,
                    "PREFECT_PLUGINS_ENABLED": "false",
                },
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the flows' stdout is a pipe too: same buffering
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.sock = mine
        self.started = time.monotonic()
        self.runs = 0
        self.site: dict[str, int] | None = None  # import dirs' mtimes, once ready

    def ready(self, timeout: float) -> None:
        if self.site is not None:
            return
        body = self._receive(timeout)
        if body is None:
            raise WarmError(f"the warm process did not get ready in {timeout:.0f}s")
        if "failed" in body:
            raise WarmError(f"the warm process failed to start: {body['failed']}")
        site = body.get("site")
        if not isinstance(site, dict):
            raise WarmError(f"the warm process said {body!r} instead of ready")
        self.site = {str(k): int(v) for k, v in site.items()}

    def start(self, request: dict[str, Any], fds: list[int]) -> int:
        try:
            forkserver.send(self.sock, request, fds)
        except OSError as exc:
            raise WarmError(f"the warm process cannot be reached: {exc}") from None
        deadline = time.monotonic() + 30
        while (left := deadline - time.monotonic()) > 0:
            body = self._receive(left)
            if body is None:
                break
            if "started" in body:
                self.runs += 1
                return int(body["started"])
            if "refused" in body:
                raise WarmError(str(body["refused"]))
            # "exited" for a run left behind earlier (a stopping worker): not ours now
        raise WarmError("the warm process did not answer")

    def exited(self, pid: int, timeout: float | None) -> int | None:
        """The exit status of the shim ``pid`` once reported; None on timeout. Raises
        WarmError when the warm process is gone (it can no longer tell)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            body = self._receive(left)
            if body is None:
                return None
            if body.get("exited") == pid:
                return int(body["code"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """The warm process exits at EOF; runs it started go on."""
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message; None on timeout. WarmError at EOF, or when a message cannot
        be read (as good as gone)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            body, fds = forkserver.receive(self.sock)
        except (OSError, ValueError):
            body, fds = None, []
        for fd in fds:
            os.close(fd)
        if body is None:
            raise WarmError(f"the warm process ended ({_exit_of(self.proc)})")
        return body


class WarmHandle:
    note = "warm"

    def __init__(
        self, warm: WarmProcess, pid: int, run_dir: Path, on_end: Callable[[WarmProcess], None]
    ) -> None:
        self._warm, self._pid, self._run_dir, self._on_end = warm, pid, run_dir, on_end
        self._who: ProcessId | None = identify(pid)
        self._lost = False

    @property
    def pid(self) -> int:
        return self._pid

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        code: int | None = None
        if not self._lost:
            try:
                code = self._warm.exited(self._pid, timeout)
                if code is None:
                    return None
            except WarmError:
                self._lost = True  # watch the shim by its identity, as adoption would
        if self._lost:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._who is not None and self._who.alive():
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)
        self._on_end(self._warm)
        return exit_status(self._run_dir, code)


class WarmLauncher:
    def __init__(
        self,
        cold: ShimLauncher,
        flow_python: str,
        environ: Mapping[str, str],
        recycle_after: int,
        max_log_bytes: int,
    ) -> None:
        self.cold = cold
        self.python = flow_python
        self.engine_argv = build_argv(None, flow_python)
        # What every run inherits (agent.core.environment.base_env: no credential); the
        # warm process starts with it.
        self.env = dict(environ)
        self.env.pop("PYTHONPATH", None)  # each run's is rebuilt, see agent/core/launch.py
        self.recycle_after = recycle_after
        self.max_log_bytes = max_log_bytes
        self._warm: WarmProcess | None = None
        self._retired: list[WarmProcess] = []
        self._retry_at = 0.0
        self._spawn()  # importing Prefect now, while no run waits for it

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        run_dir: Path,
        keep_fds: Sequence[int],
        echo_prefix: str | None,
        cgroups: Sequence[Path] = (),
    ) -> ShimHandle | WarmHandle:
        why = launch.cold_reason(argv, self.engine_argv, env, self.env)
        if why is None:
            try:
                return self._fork(env, cwd, run_dir, keep_fds, echo_prefix, cgroups)
            except WarmError as exc:
                why = str(exc)
                if exc.failed:
                    self._discard(failed=True)
        metrics.LAUNCHES.labels("cold").inc()
        handle = self.cold.start(argv, env, cwd, run_dir, keep_fds, echo_prefix, cgroups)
        handle.note = f"cold start: {why}"
        return handle

    def _fork(
        self,
        env: Mapping[str, str],
        cwd: str,
        run_dir: Path,
        keep_fds: Sequence[int],
        echo_prefix: str | None,
        cgroups: Sequence[Path],
    ) -> WarmHandle:
        warm = self._current()
        warm.ready(max(0.0, warm.started + READY_SECONDS - time.monotonic()))
        assert warm.site is not None
        changed = launch.packages_changed(warm.site, forkserver.site_stamps(list(warm.site)))
        if changed:
            self._discard(failed=False)  # and a new one starts importing now
            raise WarmError(f"{changed}; a new warm process is starting", failed=False)
        (run_dir / "status.json").unlink(missing_ok=True)
        shim_env, secrets = split_secrets(env)
        request = {
            "run_dir": str(run_dir),
            "argv": list(self.engine_argv),
            "env": shim_env,
            "secrets": secrets,
            "cwd": cwd,
            "max_bytes": self.max_log_bytes,
            "echo": echo_prefix is not None,
            "prefix": echo_prefix or "",
            "cgroups": [str(c) for c in cgroups],
        }
        pid = warm.start(request, [sys.stdout.fileno(), sys.stderr.fileno(), *keep_fds])
        metrics.LAUNCHES.labels("warm").inc()
        if warm.runs >= self.recycle_after:
            self._retired.append(warm)  # closed once its last run has ended
            self._warm = None
            self._spawn()
        return WarmHandle(warm, pid, run_dir, self._ended)

    def _current(self) -> WarmProcess:
        if self._warm is not None and not self._warm.alive():
            gone = _exit_of(self._warm.proc)
            # Ready once, so not a process that cannot start: a new one starts now.
            again = self._warm.site is not None
            self._discard(failed=not again)
            raise WarmError(f"the warm process ended ({gone})", failed=not again)
        if self._warm is None:
            if time.monotonic() < self._retry_at:
                raise WarmError("the warm process failed recently; it is tried again soon")
            self._spawn()
        if self._warm is None:
            raise WarmError("the warm process cannot be started")
        return self._warm

    def _spawn(self) -> None:
        try:
            self._warm = WarmProcess(self.python, self.env)
        except (OSError, ValueError) as exc:
            log.warning("cannot start the warm process (%s): runs start cold", exc)
            self._warm, self._retry_at = None, time.monotonic() + RETRY_SECONDS

    def _discard(self, failed: bool) -> None:
        if self._warm is not None:
            self._warm.close()
            self._warm = None
        if failed:
            self._retry_at = time.monotonic() + RETRY_SECONDS
        else:
            self._spawn()

    def _ended(self, warm: WarmProcess) -> None:
        if warm in self._retired:
            self._retired.remove(warm)
            warm.close()


def _exit_of(proc: subprocess.Popen[bytes]) -> str:
    code = proc.poll()
    return "still running" if code is None else f"exit status {code}"
