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
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

from agent.worker.procid import identify

STATUS_FILE = "status.json"
LOG_FILE = "output.log"


def _open_private(path: Path, flags: int) -> int:
    """The flow's output and status may hold its secrets: 0600, whatever the umask (and
    whatever mode a file left by an older version had)."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):  # not ours to change: still write to it
        os.fchmod(fd, 0o600)
    return fd


def _append(path: Path) -> BinaryIO:
    return os.fdopen(_open_private(path, os.O_WRONLY | os.O_APPEND), "ab")


class BoundedLog:
    """Appends to ``output.log``; past ``max_bytes`` it rotates once to ``output.log.1``,
    so at most twice the bound is kept and the latest output is always there."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.file: BinaryIO = _append(path)  # lives as long as the run
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.max_bytes and self.size > 0:
            self.file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = _append(self.path)
            self.size = 0
        self.file.write(data)
        self.file.flush()
        self.size += len(data)

    def close(self) -> None:
        self.file.close()


def write_status(run_dir: Path, status: dict[str, object]) -> None:
    tmp = run_dir / f".{STATUS_FILE}.tmp"
    with os.fdopen(_open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
        json.dump(status, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / STATUS_FILE)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _restore_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run(run_dir: Path, argv: list[str], max_bytes: int, prefix: str, echo: bool) -> int:
    """status.json goes through three phases, each written atomically:
    "starting" (the shim's own identity, before the flow exists), "running" (+ the flow's
    pid and identity), "ended" (+ its return code). A worker that adopts the run reads it:
    no file at all means the flow never started."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    log = BoundedLog(run_dir / LOG_FILE, max_bytes)
    started = time.time()
    shim = identify(os.getpid())
    status: dict[str, object] = {
        "phase": "starting",
        "shim": shim.to_json() if shim else None,
        "started": started,
    }
    write_status(run_dir, status)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_restore_signals,  # the flow must get the signals the shim ignores
        )
    except OSError as exc:
        # Not a flow failure the engine could report: say so in the status.
        message = f"cannot start {argv[0]!r}: {exc.strerror}"
        log.write(f"local-agent: {message}\n".encode())
        log.close()
        status.update(phase="ended", returncode=127, error=message, ended=time.time())
        write_status(run_dir, status)
        return 0
    flow = identify(proc.pid)
    status.update(phase="running", pid=proc.pid, flow=flow.to_json() if flow else None)
    write_status(run_dir, status)
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in iter(proc.stdout.readline, b""):
        log.write(line)
        if echo:
            try:
                out.write(prefix.encode() + line)
                out.flush()
            except (BrokenPipeError, OSError):
                echo = False  # the worker's stdout is gone (worker died): keep the log
    returncode = proc.wait()
    log.close()
    status.update(phase="ended", returncode=returncode, ended=time.time())
    write_status(run_dir, status)
    return 0


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.worker.shim")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no command given after --")
    return run(ns.run_dir, argv, ns.max_bytes, ns.prefix, ns.echo)


if __name__ == "__main__":
    sys.exit(main())
