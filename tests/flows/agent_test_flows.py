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
