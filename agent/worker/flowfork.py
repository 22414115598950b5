"""The flow's side of a warm launch: in the shim forked by the warm process
(agent/worker/forkserver.py), ``ForkedFlow`` forks the flow, and ``become_flow`` turns
that fork of an interpreter with Prefect imported into what a cold ``python -m
prefect.engine`` would be: the run's environment, cwd and ``sys.path``, Prefect's
settings, logging and plugins read again from them, a new interpreter's signal
dispositions, no descriptor but the output pipe; then the engine as ``__main__``, and
the end an interpreter makes (``run_main``).

Standard library only, like the fork server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO


class ForkedFlow:
    """The flow's process, forked from the shim: ``subprocess.Popen``'s part the shim uses."""

    def __init__(self, env: dict[str, str], base_path: list[str]) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            # As Popen's close_fds: above all the spec's lease stays with the shim (a
            # flow outliving its shim must not keep its run from being adopted).
            os.closerange(3, _max_fd())
            os._exit(become_flow(env, base_path))
        os.close(write_fd)
        self.pid = pid
        self.stdout: IO[bytes] | None = os.fdopen(read_fd, "rb", buffering=0)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


# -- the flow: from a warm fork to what a cold `python -m prefect.engine` is ----------


def become_flow(env: dict[str, str], base_path: list[str]) -> int:
    """Runs in the forked flow process; returns its exit status (never raises)."""
    try:
        _cold_signals()
        os.environ.clear()
        os.environ.update(env)
        time.tzset()
        sys.path[:] = flow_path(os.getcwd(), env.get("PYTHONPATH"), base_path)
        for name in [n for n in sys.modules if n == "agent" or n.startswith("agent.")]:
            del sys.modules[name]  # the warm parent's own code is not the flow's
        _refresh_prefect()
        sys.modules.pop("prefect.engine", None)  # runpy runs it afresh as __main__
        sys.argv[:] = ["-m"]  # runpy puts the engine's path first, as -m does
        sys.orig_argv = [sys.executable, "-m", "prefect.engine"]
    except BaseException:
        traceback.print_exc()
        return 1
    return run_main(_run_engine)


def flow_path(cwd: str, pythonpath: str | None, base_path: list[str]) -> list[str]:
    """``sys.path`` as ``python -m`` in ``cwd`` builds it: PYTHONPATH's entries before
    the interpreter's own, each made absolute (an empty one is the cwd) and repeats
    dropped (site.removeduppaths); then -m puts the cwd in front."""
    entries = pythonpath.split(os.pathsep) if pythonpath else []
    seen: set[str] = set()
    rest: list[str] = []
    for entry in [*(os.path.join(cwd, e) if e else cwd for e in entries), *base_path]:
        path = os.path.normpath(entry)
        if path not in seen:
            seen.add(path)
            rest.append(path)
    return [cwd, *rest]


def _run_engine() -> None:
    import runpy

    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


def run_main(main: Callable[[], object]) -> int:
    """Run ``main`` and end as the interpreter does: the exit status of SystemExit, a
    traceback and 1 for an exception, threads joined and atexit run before flushing."""
    code = 0
    interrupted = False
    try:
        main()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt as exc:
        _excepthook(exc)
        code, interrupted = 1, True
    except BaseException as exc:
        _excepthook(exc)
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize does first
    except BaseException:
        traceback.print_exc()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _flush_open_files()
    if interrupted:  # Python ends an uncaught KeyboardInterrupt by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _flush_open_files() -> None:
    """What the flow wrote to a file it never closed: the interpreter's exit frees every
    module and so flushes such a file; a forked flow leaves by os._exit, which would lose
    it. Only regular files: flushing a pipe or socket could block the exit."""
    import gc
    import io

    for obj in gc.get_objects():  # ~0.07 s with prefect imported; Py_Finalize takes 0.35
        if not isinstance(obj, io.BufferedIOBase | io.TextIOBase) or obj.closed:
            continue
        with contextlib.suppress(Exception):
            if stat.S_ISREG(os.fstat(obj.fileno()).st_mode):
                obj.flush()


def _excepthook(exc: BaseException) -> None:
    """What the interpreter does with an uncaught exception (a library may have set it)."""
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException:
        traceback.print_exc()


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(Exception):
        print(value, file=sys.stderr)
    return 1


def _cold_signals() -> None:
    """The dispositions a fresh interpreter has."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _refresh_prefect() -> None:
    """Prefect read its settings and logging configuration from the warm parent's
    environment at import: read them again from the run's."""
    import prefect
    import prefect.context
    import prefect.logging.configuration as logging_configuration

    prefect.context.refresh_global_settings_context()
    logging_configuration.PROCESS_LOGGING_CONFIG.clear()
    logging_configuration.setup_logging(incremental=False)
    # `import prefect` runs the plugins' startup hooks when the settings enable them
    # (the warm process has them off): now, with the run's settings.
    initialize = getattr(prefect, "_initialize_plugins", None)
    if initialize is not None:
        initialize()


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536
