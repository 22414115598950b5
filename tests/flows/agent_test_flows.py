"""Flows the integration tests deploy. Each records what it saw in files the test reads."""

from __future__ import annotations

import json
import os
import sys
import time

from prefect import flow


@flow
def record(marker: str) -> None:
    """Append this run's id to ``marker``: the tests count executions from it."""
    with open(marker, "a") as f:
        f.write(os.environ["PREFECT__FLOW_RUN_ID"] + "\n")


@flow
def boom() -> None:
    raise ValueError("boom: this flow fails on purpose")


@flow
def hard_exit(code: int = 3) -> None:
    sys.stdout.flush()
    os._exit(code)


@flow
def show_env(out: str, keys: list[str], pause: float = 0.0) -> None:
    """Write the named variables, PYTHONPATH entries and whether ``helper_mod`` imports."""
    try:
        import helper_mod  # type: ignore[import-not-found]  # found through --import-path

        helper = helper_mod.VALUE
    except ImportError:
        helper = None
    print("show_env ran")
    time.sleep(pause)  # lets a test look at the live processes
    with open(out, "w") as f:
        json.dump(
            {"env": {k: os.environ.get(k) for k in keys}, "helper": helper, "cwd": os.getcwd()}, f
        )


@flow
def slow_record(marker: str, pause: float, code: int = 0) -> None:
    """Sleep, then record this run's id (as ``record``), then exit with ``code`` if set:
    a run that outlives its worker, and ends however the test wants."""
    time.sleep(pause)
    with open(marker, "a") as f:
        f.write(os.environ["PREFECT__FLOW_RUN_ID"] + "\n")
    if code:
        sys.stdout.flush()
        os._exit(code)


@flow
def stubborn(marker: str, pause: float) -> None:
    """Ignore SIGTERM, sleep, then record (as ``slow_record``): only SIGKILL stops it early."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(pause)
    with open(marker, "a") as f:
        f.write(os.environ["PREFECT__FLOW_RUN_ID"] + "\n")


# -- containment (tests/integration/test_containment.py) ---------------------------------


@flow
def hog(mib: int) -> None:
    """Touch ``mib`` MiB, 8 MiB at a time: past a memory limit the OOM killer ends it."""
    print("hog: allocating", mib, "MiB", flush=True)
    chunks = []
    for i in range(0, mib, 8):
        chunks.append(bytearray(8 * 1024 * 1024))
        if i % 64 == 0:
            print(f"hog: {i} MiB so far", flush=True)
    print("hog: done, never killed", flush=True)


@flow
def daemonize(pidfile: str, pause: float = 120.0) -> None:
    """Double-fork a `sleep 1000` that leaves the process group (setsid), record its pid,
    then wait to be cancelled."""
    import subprocess

    subprocess.run(
        [
            "sh",
            "-c",
            f"setsid sh -c 'sleep 1000 & echo $! > {pidfile}' </dev/null >/dev/null 2>&1 &",
        ],
        check=True,
    )
    time.sleep(pause)


@flow
def sleeper(pause: float) -> None:
    print(f"sleeper: sleeping {pause} s", flush=True)
    time.sleep(pause)


@flow
def fork_bomb(out: str, seconds: float = 5.0) -> None:
    """Fork without end for ``seconds``; records how many forks failed (EAGAIN)."""
    import subprocess

    children = []
    refused = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            children.append(subprocess.Popen(["sleep", "30"]))
        except OSError:
            refused += 1
            time.sleep(0.01)
    with open(out, "w") as f:
        json.dump({"started": len(children), "refused": refused}, f)
    for child in children:
        child.kill()
        child.wait()


@flow
def busy(out: str, seconds: float = 5.0) -> None:
    """Spin for ``seconds`` of wall time; record the CPU share it got."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - wall0 < seconds:
        pass
    share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    with open(out, "w") as f:
        json.dump({"share": share}, f)


# -- warm launches (tests/integration/test_warm_*.py) -------------------------------------

# Each import of this module appends the importing pid to the named file: user code must
# be imported by the flow's own process only, never by a warm process that forks runs.
if os.environ.get("AGENT_TEST_IMPORT_MARKER"):
    with open(os.environ["AGENT_TEST_IMPORT_MARKER"], "a") as _imports:
        _imports.write(f"{os.getpid()}\n")


@flow
def introspect(out: str) -> None:
    """Write what the flow's process sees to ``out`` (JSON): environment, Prefect's
    settings, import path, cwd, argv, threads, modules, time zone, logging, signals."""
    import datetime
    import logging
    import signal
    import threading

    from prefect.settings import get_current_settings
    from prefect.types._datetime import in_local_tz

    main = sys.modules.get("__main__")
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGCHLD", "SIGPIPE", "SIGQUIT", "SIGXFSZ")
    handlers = {n: signal.getsignal(getattr(signal, n)) for n in names}
    with open("/proc/self/status") as f:
        umask = [line.split()[1] for line in f if line.startswith("Umask:")]
    new_year = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    seen = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "environ": dict(os.environ),
        "settings": get_current_settings().model_dump(mode="json"),
        "sys_path": list(sys.path),
        "cwd": os.getcwd(),
        "argv": list(sys.argv),
        "orig_argv": list(sys.orig_argv),
        "threads": sorted(t.name for t in threading.enumerate()),
        "tasks": len(os.listdir("/proc/self/task")),
        "agent_modules": sorted(m for m in sys.modules if m == "agent" or m.startswith("agent.")),
        "modules": sorted(sys.modules),
        "main": [getattr(main, "__name__", None), getattr(main, "__file__", None)],
        "tzname": list(time.tzname),
        "local_new_year": [str(new_year.astimezone()), str(in_local_tz(new_year))],
        "prefect_log_level": logging.getLogger("prefect").getEffectiveLevel(),
        "marker_log_level": logging.getLogger("agent_test_marker").level,
        "root_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "signals": {n: getattr(h, "__qualname__", str(h)) for n, h in handlers.items()},
        "umask": umask,
        "stdout": [type(sys.stdout.buffer).__name__, sys.stdout.line_buffering],
        "str_hash": hash("agent-test"),
    }
    print("introspect ran", flush=True)
    with open(out, "w") as f:
        json.dump(seen, f, default=str)
