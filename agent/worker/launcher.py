"""Launching: given a run's argv, env and cwd, start its process; hand back a handle.

This is the one seam between the worker and how processes are made. ShimLauncher: a
cold ``subprocess.Popen`` of the per-run shim, which starts the flow. WarmLauncher
(agent/worker/warm.py): the shim and the flow forked from an interpreter with Prefect
already imported, cold when a run needs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.core.causes import exit_text
from agent.spool.files import read_json_object
from agent.worker import shim
from agent.worker.procid import ProcessId


@dataclass(frozen=True)
class ExitStatus:
    returncode: int | None  # the flow's; negative = killed by that signal
    error: str | None = None  # why it never started, or why no status was recorded

    def describe(self) -> str:
        return exit_text(self.returncode, self.error)


class RunHandle(Protocol):
    @property
    def pid(self) -> int: ...

    # How the run was launched when it is worth a word in its log: "warm", or why it
    # started cold although warm launches are on; "" otherwise.
    note: str

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """The run's exit status once its process has ended; None if ``timeout``
        seconds passed first (no timeout: wait for the end)."""
        ...


class Launcher(Protocol):
    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        run_dir: Path,
        keep_fds: Sequence[int],
        echo_prefix: str | None,
        cgroups: Sequence[Path] = (),
    ) -> RunHandle: ...


def read_status(run_dir: Path) -> dict[str, Any]:
    """The shim's status.json; empty if there is none (yet) or it cannot be read."""
    return read_json_object(run_dir / shim.STATUS_FILE) or {}


def signal_run(run_dir: Path, sig: signal.Signals) -> ProcessId | None:
    """Send ``sig`` to the run's process group; returns the process it went through, or
    None if no process recorded in ``status.json`` is still the one recorded.

    The shim is the session and process-group leader and the flow its child in the same
    group, so the group's id is the shim's pid. Each recorded identity (pid + start time
    + boot id) is checked first, so a pid reused since is never signalled. When the shim
    has died (a run adopted after its worker and shim died), the flow's own group is
    signalled: the group outlives its leader.
    """
    status = read_status(run_dir)
    for role in ("shim", "flow"):
        who = ProcessId.from_json(status.get(role))
        if who is None or not who.alive():
            continue
        try:
            os.killpg(who.pid if role == "shim" else os.getpgid(who.pid), sig)
        except ProcessLookupError:
            continue  # ended between the check and the signal
        return who
    return None


def exit_status(run_dir: Path, shim_code: int | None) -> ExitStatus:
    """How the run ended, from its status.json, else from how its shim ended (None:
    not known, the shim was not our child)."""
    status = read_status(run_dir)
    code = status.get("returncode")
    if isinstance(code, int):
        error = status.get("error")
        return ExitStatus(code, str(error) if error else None)
    if shim_code == shim.RET_NOT_STARTED:
        return ExitStatus(None, "was not started: its start could not be recorded (spool full?)")
    if shim_code == shim.RET_UNRECORDED:
        return ExitStatus(None, "ended, but its exit status could not be recorded (spool full?)")
    how = f"ended with {shim_code}" if shim_code is not None else "ended"
    return ExitStatus(None, f"its supervising shim {how} before the flow did")


class ShimHandle:
    def __init__(self, proc: subprocess.Popen[bytes], run_dir: Path, note: str = "") -> None:
        self._proc, self._run_dir = proc, run_dir
        self.note = note  # how it was launched, for the run's "Process started" line

    @property
    def pid(self) -> int:
        """The shim's pid, which is also the run's process group and session id."""
        return self._proc.pid

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        try:
            shim_code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return exit_status(self._run_dir, shim_code)


class ShimLauncher:
    def __init__(self, max_log_bytes: int, python: str = sys.executable) -> None:
        self.max_log_bytes = max_log_bytes
        self.python = python  # the agent's interpreter, which can import agent.worker.shim

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        run_dir: Path,
        keep_fds: Sequence[int],
        echo_prefix: str | None,
        cgroups: Sequence[Path] = (),
    ) -> ShimHandle:
        (run_dir / shim.STATUS_FILE).unlink(missing_ok=True)
        # The credential reaches the flow only: the shim gets it through a pipe, not in
        # its own environment (readable in /proc/<pid>/environ as long as it lives).
        shim_env, secrets = split_secrets(env)
        fds = list(keep_fds)
        cmd = [
            self.python,
            "-I",
            "-m",
            "agent.worker.shim",
            "--run-dir",
            str(run_dir),
            "--max-bytes",
            str(self.max_log_bytes),
        ]
        if echo_prefix is not None:
            cmd += ["--echo", "--prefix", echo_prefix]
        for directory in cgroups:  # joined by the shim before the flow starts
            cmd += ["--cgroup", str(directory)]
        secrets_fd = _secrets_pipe(secrets) if secrets else None
        if secrets_fd is not None:
            cmd += ["--secrets-fd", str(secrets_fd)]
            fds.append(secrets_fd)
        cmd += ["--", *argv]
        try:
            proc = subprocess.Popen(
                cmd,
                env=shim_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                # With --echo the flow's output goes to the worker's stdout (supervisor's log).
                stdout=None if echo_prefix is not None else subprocess.DEVNULL,
                stderr=None,
                start_new_session=True,  # outlives the worker and supervisor's group signals
                pass_fds=tuple(fds),  # the spec's lease lives as long as the run
            )
        finally:
            if secrets_fd is not None:
                os.close(secrets_fd)
        return ShimHandle(proc, run_dir)


# The credential variables (agent/settings/config.py ApiSettings.secret_env).
SECRET_KEYS = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")


def split_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A run's environment without the credential, and the credential: the shim is
    handed the one, and the other only for the flow's environment."""
    secrets = {k: env[k] for k in SECRET_KEYS if k in env}
    return {k: v for k, v in env.items() if k not in secrets}, secrets


def _secrets_pipe(secrets: Mapping[str, str]) -> int:
    """A pipe's read end holding ``secrets`` as JSON, its write end closed: the shim
    reads to the end. A credential is far below a pipe's buffer (64 KiB), so the write
    never blocks; a larger one is refused (ValueError fails the run, not the worker)."""
    data = json.dumps(dict(secrets)).encode()
    if len(data) > 60_000:
        raise ValueError("the API credential is too long to hand to a flow run")
    read_fd, write_fd = os.pipe()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd
