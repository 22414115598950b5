"""The warm process: the flow's interpreter with ``prefect`` imported, which forks runs.

Started by a worker's WarmLauncher (agent/worker/warm.py) as ``<flow python> -c
BOOTSTRAP`` with a control socket on fd 3. It imports Prefect once, says "ready", then
for each request forks:

- a **shim** (the child): a new session, the run's cgroups, status.json, output capture,
  exactly agent/worker/shim.py's ``run``; it forks
- the **flow** (the grandchild): the run's environment, cwd and ``sys.path`` put in
  place of the warm parent's, Prefect's settings, logging and plugins read again from
  them, then ``prefect.engine`` run as ``__main__``, as ``python -m prefect.engine``
  would (agent/worker/flowfork.py).

It forks only while it is the one thread of its process (a forked thread holds no lock
it had), and never imports user code: the flow's deployment is loaded by the engine in
the grandchild. It exits when the worker goes (its control socket reads EOF); runs it
started go on, like cold ones, and are adopted from their status.json.

Standard library only (it runs in the flow's interpreter, which has Prefect but maybe
not the agent's dependencies), and written for the agent's oldest supported Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from agent.worker import shim
from agent.worker.flowfork import ForkedFlow

CONTROL_FD = 3
RUN_ID_VAR = "PREFECT__FLOW_RUN_ID"
# The warm parent starts with RUN_ID_VAR set to this placeholder: a run's id is written
# over it in the forked processes' own copy of the environment block, so that
# /proc/<pid>/environ shows PREFECT__FLOW_RUN_ID=<id> as for a cold start (the stranded
# duty and adoption find a run's processes by it).
RUN_ID_SLOT = "0" * 36
MARKER = "local-agent warm"  # in the warm parent's argv: ps and the benchmark see it
MAX_FDS = 16
_HEADER = struct.Struct("!I")
# What the warm parent imports: Prefect and what its engine runs on; never user code.
WARM_IMPORTS = ("prefect", "prefect.main", "prefect.engine", "prefect.flow_engine")
# Also imported by a cold `python -m prefect.engine` of a deployment's run (Prefect
# 3.8.8, measured with -X importtime), ~30 ms that no forked run pays again. Not the
# deployment steps, the runner or bundles: they import `prefect.engine` a second time
# (the engine runs as __main__), which a warm run must do for itself to see the same
# modules as a cold one (tests/integration/test_warm_parity.py). None reads a setting
# nor starts a thread at import; one another version lacks is skipped.
WARM_EXTRAS = (
    "anyio._backends._asyncio",
    "packaging.requirements",
    "pydantic.v1",
    "prefect._internal.installation",
    "prefect._internal.integrations",
    "prefect._internal.observers",
    "prefect.locking._filelock",
)


# -- framing: a 4-byte length, then JSON; file descriptors ride with the first bytes --


def send(sock: socket.socket, body: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(body).encode()
    frame = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], fds) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors sent with it; (None, []) at EOF. It reads no byte
    past its message: the next one stays in the socket, where select sees it."""
    data, fds, _, _ = socket.recv_fds(sock, _HEADER.size, MAX_FDS)
    if not data:
        return None, list(fds)
    while len(data) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(data))
        if not more:
            return None, list(fds)
        data += more
    (size,) = _HEADER.unpack(data[: _HEADER.size])
    body = data[_HEADER.size :]
    while len(body) < size:
        more = sock.recv(min(1 << 20, size - len(body)))
        if not more:
            return None, list(fds)
        body += more
    found = json.loads(body)
    return (found if isinstance(found, dict) else None), list(fds)


# -- the warm parent ----------------------------------------------------------------


class Warm:
    def __init__(self, control: socket.socket, base_path: list[str]) -> None:
        self.control = control
        self.base_path = base_path  # sys.path as the interpreter made it, less ''
        self.slot = _env_slot(RUN_ID_VAR)
        self.children: set[int] = set()  # shims forked, not yet reaped

    def serve(self) -> int:
        try:
            return self._serve()
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the worker is gone; the runs go on without us

    def _serve(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the pipe
        send(self.control, {"ready": os.getpid(), "site": site_stamps(self.base_path)})
        while True:
            self._reap()
            ready, _, _ = select.select([self.control.fileno(), wake_r], [], [], 5)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            if self.control.fileno() not in ready:
                continue
            request, fds = receive(self.control)
            if request is None:
                return 0  # the worker is gone; the runs go on without us
            try:
                reply = self._start(request, fds, (wake_r, wake_w))
            finally:
                for fd in fds:
                    os.close(fd)
            send(self.control, reply)

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                send(self.control, {"exited": pid, "code": code})

    def _start(
        self, request: dict[str, Any], fds: list[int], wake: tuple[int, int]
    ) -> dict[str, Any]:
        threads = _threads()
        if threads != 1:
            return {"refused": f"the warm process has {threads} threads; it forks only with one"}
        if self.slot is None:
            return {"refused": "the warm process cannot mark its runs' environment"}
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()  # nothing of ours is written twice by the children
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN: the host's or the agent's process limit
            return {"refused": f"the warm process cannot fork: {exc.strerror or exc}"}
        if pid == 0:
            code = 70  # EX_SOFTWARE: the shim itself failed
            try:
                signal.set_wakeup_fd(-1)
                for fd in (*wake, self.control.fileno()):
                    os.close(fd)
                code = self._shim(request, fds)
            except BaseException:
                with contextlib.suppress(Exception):
                    traceback.print_exc()
            finally:
                os._exit(code)
        self.children.add(pid)
        return {"started": pid}

    def _shim(self, request: dict[str, Any], fds: list[int]) -> int:
        """In the forked shim: what ShimLauncher's ``Popen`` + ``shim.main`` do cold."""
        os.setsid()  # outlives the worker and supervisor's group signals, as cold
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        run_id = str(request["env"].get(RUN_ID_VAR, ""))
        self._mark(run_id)
        echo_fd, err_fd = fds[0], fds[1]
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(echo_fd if request["echo"] else null, 1)
        os.dup2(err_fd, 2)
        for fd in {null, echo_fd, err_fd} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        env = {str(k): str(v) for k, v in request["env"].items()}
        return shim.run(
            Path(request["run_dir"]),
            list(request["argv"]),
            int(request["max_bytes"]),
            str(request["prefix"]),
            bool(request["echo"]),
            {str(k): str(v) for k, v in request["secrets"].items()},
            [Path(p) for p in request["cgroups"]],
            spawn=lambda argv, full_env: ForkedFlow(full_env, self.base_path),
            env=env,
        )

    def _mark(self, run_id: str) -> None:
        if self.slot is not None and len(run_id.encode()) == len(RUN_ID_SLOT):
            ctypes.memmove(self.slot, run_id.encode(), len(RUN_ID_SLOT))


def _threads() -> int:
    """Threads of this process as the kernel sees them (C threads included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _env_slot(name: str) -> int | None:
    """The address of ``name``'s value in this process's original environment block
    (what /proc/<pid>/environ shows), or None."""
    try:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        address = libc.getenv(name.encode())
    except (OSError, AttributeError):
        return None
    if not address or ctypes.string_at(address) != RUN_ID_SLOT.encode():
        return None
    return int(address)


def site_stamps(paths: list[str]) -> dict[str, int]:
    """The mtime of each import directory: installing or removing a package changes the
    one it goes into, and then the warm process is no longer what a cold start gives."""
    stamps: dict[str, int] = {}
    for entry in paths:
        with contextlib.suppress(OSError):
            if os.path.isdir(entry):
                stamps[entry] = os.stat(entry).st_mtime_ns
    return stamps


def main(control_fd: int = CONTROL_FD) -> int:
    # Before anything imports: sys.path as the interpreter made it, less the '' of -c.
    base_path = [p for p in sys.path[1:] if p]
    sys.path[:] = base_path  # nothing imported from the cwd
    control = socket.socket(fileno=control_fd)
    warm = Warm(control, base_path)  # finds the placeholder's slot, or has none
    del os.environ[RUN_ID_VAR]  # the C block keeps it; Prefect must not see it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in a terminal: the worker decides
    try:
        for module in WARM_IMPORTS:
            __import__(module)
    except BaseException as exc:
        send(control, {"failed": f"cannot import {module}: {exc!r}"[:500]})
        return 1
    for module in WARM_EXTRAS:
        with contextlib.suppress(Exception):
            __import__(module)
    sys.modules.pop("prefect.engine", None)  # run afresh, as __main__, in each flow
    return warm.serve()


# The warm parent's whole command line: the agent's code found through its own path, then
# taken out of sys.path again before anything else is imported.
BOOTSTRAP = (
    "import sys; sys.path.insert(0, {root!r}); "
    "import agent.worker.forkserver as f; del sys.path[0]; "
    f"sys.exit(f.main())  # {MARKER}"
)
