"""Cancellation latency, as the UI's Cancel causes it (a forced Cancelling):

- a **running** run: from the Cancelling state's time to the moment the process the flow
  runs in is gone (its pid, which the flow wrote down, checked in /proc every 10 ms);
- a **waiting** run (every slot busy with a running run): Cancelling -> Cancelled, both
  the server's timestamps.

Each round fills every slot with a ``hold`` run, adds one that must wait, cancels the
waiting one, then each running one in turn.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path

from agent.worker.procid import start_time
from ops.benchmark.console import log
from ops.benchmark.contenders import Side
from ops.benchmark.measure import HOLD, World
from ops.benchmark.results import CANCEL_WAIT_SECONDS, Cancellation, entered, state_type
from tests.integration.harness import wait_for

SETTLE_SECONDS = 3.0  # lets the side see the waiting run (poll, push, claim) first
HOLD_SECONDS = 300.0


def gone_at(pid: int, started: int | None, timeout: float) -> float | None:
    """When the process ``pid`` (started at ``started`` clock ticks) was first seen gone
    (or a zombie); None if it still ran after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if start_time(pid) != started:
            return time.time()
        time.sleep(0.01)
    return None


def all_exist(paths: list[Path]) -> bool:
    return all(p.exists() for p in paths)


def read_pid(path: Path) -> tuple[int, int | None]:
    pid = int(path.read_text())
    return pid, start_time(pid)


def cancellations(world: World, side: Side, rounds: int, concurrency: int) -> None:
    deployment = world.deploy(side.pool, HOLD, f"{side.pool}-hold")
    folder = world.tmp / side.key / "hold"
    folder.mkdir(parents=True, exist_ok=True)
    out = side.result.cancels
    for r in range(rounds):
        holders = []
        for i in range(concurrency):
            pidfile = folder / f"{r}-{i}.pid"
            params = {"pidfile": str(pidfile), "pause": HOLD_SECONDS}
            holders.append((world.create(deployment, params), pidfile))
        extra_pidfile = folder / f"{r}-waiting.pid"
        params = {"pidfile": str(extra_pidfile), "pause": HOLD_SECONDS}
        waiter = world.create(deployment, params)
        wait_for(
            functools.partial(all_exist, [p for _, p in holders]),
            world.args.timeout,
            f"{side.result.name}'s {concurrency} hold runs to run",
        )
        time.sleep(SETTLE_SECONDS)
        if extra_pidfile.exists():
            side.result.notes.append("cancel: the extra run did not wait (more slots than C?)")
            holders.append((waiter, extra_pidfile))
        else:
            was = state_type(world.run(waiter))
            asked, answered = world.cancel(waiter)
            final = world.wait_state(waiter, ("CANCELLED",), CANCEL_WAIT_SECONDS)
            cancelled = entered(world.history(waiter)).get("CANCELLED")
            seconds = max(cancelled - asked, 0.0) if cancelled is not None else None
            out.append(Cancellation(waiter, True, seconds, final, "", was, answered))
            log(f"{side.result.name}: waiting run ({was}) cancelled after {_s(seconds)} "
                f"(answered {answered}, then {final})")  # fmt: skip
        for run_id, pidfile in holders:
            pid, started = read_pid(pidfile)
            was = state_type(world.run(run_id))
            asked, answered = world.cancel(run_id)
            gone = gone_at(pid, started, CANCEL_WAIT_SECONDS)
            seconds = gone - asked if gone is not None else None
            note = ""
            if gone is None:
                note = f"still running after {CANCEL_WAIT_SECONDS:.0f} s: killed by the benchmark"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            final = world.wait_state(run_id, ("CANCELLED",), CANCEL_WAIT_SECONDS)
            out.append(Cancellation(run_id, False, seconds, final, note, was, answered))
            log(f"{side.result.name}: running run's process gone {_s(seconds)} after "
                f"Cancelling ({final})")  # fmt: skip
        if extra_pidfile.exists() and not any(run == waiter for run, _ in holders):
            # It started after all (a slot freed before its cancellation took): stop it.
            side.result.notes.append("cancel: the waiting run started after its Cancelling")
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(extra_pidfile.read_text()), signal.SIGKILL)


def _s(value: float | None) -> str:
    return f"not within {CANCEL_WAIT_SECONDS:.0f} s" if value is None else f"{value:.2f} s"
