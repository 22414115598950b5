"""The per-run shim: parent of one flow run process, like Podman's conmon.

Started by a worker in a new session, as ``python -I -m agent.worker.shim``, it starts the
flow run, copies its output to a bounded log (and, with --echo, to its own stdout
with a prefix), and when the flow ends writes the exit status atomically to
``status.json``. It does not depend on the worker: if the worker dies, the flow and
the shim go on and the real exit status is still recorded. It inherits the worker's
lease on the spec, so the lease lasts as long as the run does.

Standard library only, and it ignores SIGTERM/SIGINT/SIGHUP so that a signal meant for
the flow's process group cannot stop it from recording the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

from agent.worker.procid import identify

STATUS_FILE = "status.json"
LOG_FILE = "output.log"
# How long the shim keeps trying to record a status on a full disk: the start (the
# flow is not started without it), then the end (the worker waits for it meanwhile).
START_PATIENCE = 10.0
END_PATIENCE = 600.0
RET_NOT_STARTED = 75  # EX_TEMPFAIL: the flow was not started; nothing ran
RET_UNRECORDED = 74  # EX_IOERR: the flow ended, its exit status could not be recorded
# After the flow exits, how long output still held open by its leftovers is read.
DRAIN_SECONDS = 1.0


def _open_private(path: Path, flags: int) -> int:
    """The flow's output and status may hold its secrets: 0600, whatever the umask (and
    whatever mode a file left by an older version had)."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):  # not ours to change: still write to it
        os.fchmod(fd, 0o600)
    return fd


def _append(path: Path) -> int:
    return _open_private(path, os.O_WRONLY | os.O_APPEND)


class BoundedLog:
    """Appends to ``output.log``; past ``max_bytes`` it rotates once to ``output.log.1``,
    so at most twice the bound is kept and the latest output is always there.

    It never fails the run: output that cannot be written (a full disk) is dropped and
    counted, and writing resumes as soon as the disk takes it again."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.fd = -1
        self.size = 0
        self.dropped_bytes = self.dropped_writes = 0
        self._open()

    def _open(self) -> None:
        try:
            self.fd = _append(self.path)  # lives as long as the run
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd = -1

    def write(self, data: bytes) -> None:
        try:
            if self.fd >= 0 and self.size + len(data) > self.max_bytes and self.size > 0:
                os.close(self.fd)
                self.fd = -1
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            if self.fd < 0:
                self._open()
            if self.fd < 0:
                raise OSError("output.log cannot be opened")
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                self.size += written
                view = view[written:]
        except OSError:
            self.dropped_bytes += len(data)  # part of it may be in the file: an upper bound
            self.dropped_writes += 1

    def close(self) -> None:
        if self.dropped_bytes:
            counts = self.dropped_bytes, self.dropped_writes
            note = f"local-agent: {self.dropped_bytes} bytes of output were dropped (disk full?)\n"
            self.write(note.encode())
            self.dropped_bytes, self.dropped_writes = counts  # the note is not the flow's
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_status(run_dir: Path, status: dict[str, object]) -> None:
    tmp = run_dir / f".{STATUS_FILE}.tmp"
    try:
        with os.fdopen(_open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
            json.dump(status, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # its page goes back to a full disk
        raise
    os.replace(tmp, run_dir / STATUS_FILE)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _restore_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def record(run_dir: Path, status: dict[str, object], patience: float) -> bool:
    """Write ``status``, trying again (a full disk frees up; a deleted run folder is made
    again) for up to ``patience`` seconds; whether it was written."""
    deadline = time.monotonic() + patience
    pause = 0.05
    while True:
        try:
            write_status(run_dir, status)
            return True
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.makedirs(run_dir, mode=0o700, exist_ok=True)
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def read_secrets(fd: int | None) -> dict[str, str]:
    """The credential, sent by the worker through a pipe: never in the shim's own
    environment or argv, so only the flow's environment carries it."""
    if fd is None:
        return {}
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    body = json.loads(b"".join(chunks) or b"{}")
    if not isinstance(body, dict):
        return {}
    return {str(k): str(v) for k, v in body.items()}


def join_cgroups(dirs: list[Path]) -> str | None:
    """Move this process into each of the run's cgroups (the flow, forked after, is born
    inside); why not, or None."""
    for directory in dirs:
        try:
            fd = os.open(directory / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError as exc:
            return f"cannot join the run's cgroup {directory}: {exc.strerror or exc}"
    return None


class Flow(Protocol):
    """The flow's process as the shim watches it: a ``subprocess.Popen`` (cold), or the
    warm launcher's forked process (agent/worker/forkserver.py)."""

    pid: int
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...


def popen(argv: list[str], env: dict[str, str]) -> Flow:
    """The cold start: exec the flow's command."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=_restore_signals,  # the flow must get the signals the shim ignores
    )


def run(
    run_dir: Path,
    argv: list[str],
    max_bytes: int,
    prefix: str,
    echo: bool,
    secrets: dict[str, str] | None = None,
    cgroups: list[Path] | None = None,
    spawn: Callable[[list[str], dict[str, str]], Flow] = popen,
    env: dict[str, str] | None = None,
) -> int:
    """status.json goes through three phases, each written atomically:
    "starting" (the shim's own identity, before the flow exists), "running" (+ the flow's
    pid and identity), "ended" (+ its return code). A worker that adopts the run reads it:
    no file at all means the flow never started, so the flow is not started unless
    "starting" is on disk. After that a full disk never stops the flow: output is dropped
    and counted, and the exit status is recorded as soon as the disk takes it."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    log = BoundedLog(run_dir / LOG_FILE, max_bytes)
    # Before anything is recorded: a run that cannot be contained is not started.
    refused = join_cgroups(cgroups or [])
    if refused:
        log.write(f"local-agent: {refused}\n".encode())
        log.close()
        now = time.time()
        ended = {"phase": "ended", "returncode": 127, "error": refused, "started": now}
        ended["ended"] = now
        return 0 if record(run_dir, ended, END_PATIENCE) else RET_UNRECORDED
    started = time.time()
    shim = identify(os.getpid())
    status: dict[str, object] = {
        "phase": "starting",
        "shim": shim.to_json() if shim else None,
        "started": started,
    }
    if not record(run_dir, status, START_PATIENCE):
        print("local-agent shim: cannot record the run's start; not starting it", file=sys.stderr)
        return RET_NOT_STARTED
    try:
        proc = spawn(argv, {**(os.environ if env is None else env), **(secrets or {})})
    except OSError as exc:
        # Not a flow failure the engine could report: say so in the status.
        message = f"cannot start {argv[0]!r}: {exc.strerror}"
        log.write(f"local-agent: {message}\n".encode())
        log.close()
        status.update(phase="ended", returncode=127, error=message, ended=time.time())
        return 0 if record(run_dir, status, END_PATIENCE) else RET_UNRECORDED
    flow = identify(proc.pid)
    status.update(phase="running", pid=proc.pid, flow=flow.to_json() if flow else None)
    unrecorded = not record(run_dir, status, 0)  # tried again while the flow runs
    retry_at = time.monotonic() + 1
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in read_lines(proc):
        log.write(line)
        if echo:
            try:
                out.write(prefix.encode() + line)
                out.flush()
            except (BrokenPipeError, OSError):
                echo = False  # the worker's stdout is gone (worker died): keep the log
        if unrecorded and time.monotonic() >= retry_at:
            unrecorded = not record(run_dir, status, 0)
            retry_at = time.monotonic() + 1
    returncode = proc.wait()
    status.update(phase="ended", returncode=returncode, ended=time.time())
    if log.dropped_bytes:
        status.update(dropped_bytes=log.dropped_bytes, dropped_writes=log.dropped_writes)
    recorded = record(run_dir, status, END_PATIENCE)  # first: the worker waits for it
    log.close()  # then the note on dropped output, in what room there is
    return 0 if recorded else RET_UNRECORDED


def read_lines(proc: Flow, linger: float = DRAIN_SECONDS) -> Iterator[bytes]:
    """The flow's output, line by line, until it has exited and its output is drained.

    A process the flow left behind (a daemon) may hold the pipe open for ever: once the
    flow itself has exited, output is read for ``linger`` more seconds at most, so the
    exit status is recorded and the worker can end the run (and kill what is left)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    exited_at: float | None = None
    while True:
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at >= linger:
            break
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
        if len(pending) >= 65536:  # a line without an end: pass it on in pieces
            yield pending
            pending = b""
    if pending:
        yield pending


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.worker.shim")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--secrets-fd", type=int, default=None)
    parser.add_argument("--cgroup", type=Path, action="append", default=[])
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no command given after --")
    secrets = read_secrets(ns.secrets_fd)  # first: the worker's write end is closed
    return run(ns.run_dir, argv, ns.max_bytes, ns.prefix, ns.echo, secrets, ns.cgroup)


if __name__ == "__main__":
    sys.exit(main())
