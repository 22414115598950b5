"""The API credential reaches the flow only: the shim (alive as long as the run, its
environment readable in /proc) gets it through a pipe, never in its environment or argv.
A real shim and a real flow process."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from agent.worker.launcher import ShimLauncher, read_status

SECRET = "admin:planted-credential-7f3a"
FLOW = "import time; time.sleep(60)"


def proc_file(pid: int, name: str) -> list[bytes]:
    return Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")


def fds(pid: int) -> dict[int, str]:
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # closed while we looked
    return found


def test_the_credential_is_in_the_flows_environment_and_not_the_shims(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PREFECT_API_AUTH_STRING": SECRET, "OTHER": "kept"}
    handle = ShimLauncher(1 << 20).start(
        [sys.executable, "-c", FLOW], env, str(tmp_path), tmp_path, [], None
    )
    try:
        deadline = time.monotonic() + 30
        while read_status(tmp_path).get("phase") != "running":
            assert time.monotonic() < deadline, "the flow did not start"
            time.sleep(0.05)
        flow = read_status(tmp_path)["pid"]
        shim_env, flow_env = proc_file(handle.pid, "environ"), proc_file(flow, "environ")
        assert f"PREFECT_API_AUTH_STRING={SECRET}".encode() in flow_env
        assert b"OTHER=kept" in shim_env and b"OTHER=kept" in flow_env
        assert not any(SECRET.encode() in item for item in shim_env)
        for pid in (handle.pid, flow):
            assert not any(SECRET.encode() in item for item in proc_file(pid, "cmdline"))
        # Nothing of the pipe is left open in the flow (a starting Python may have a
        # module file open: only pipes count).
        assert [fd for fd, target in fds(flow).items() if fd > 2 and "pipe:" in target] == []
    finally:
        os.killpg(handle.pid, signal.SIGKILL)
        handle.wait(30)
