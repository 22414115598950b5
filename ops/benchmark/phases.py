"""The parts that measure runs: the idle window (API requests and RSS), idle ad-hoc
pickups, scheduled runs' lateness and the bursts. Cancellation is in cancel.py."""

from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from ops.benchmark.console import log
from ops.benchmark.contenders import Side
from ops.benchmark.measure import RECORD, World
from ops.benchmark.results import Burst, IdleApi, Pickup, entered, state_type, ts
from ops.benchmark.sampling import Classifier, Sampler

# The agent's idle poll interval doubles from 0.5 s to its cap, 30 s with the events
# stream: 0.5+1+2+4+8+16 = 31.5 s after its last claim it polls at the cap (10 s without
# the stream: 15.5 s). Idle figures start this long after activity.
BACK_OFF_SECONDS = 35.0
SCHEDULE_INTERVAL = 30.0
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def endpoint(line: str) -> str:
    """``POST /api/flow_runs/<uuid>/set_state?x=1`` -> ``POST /api/flow_runs/{id}/set_state``."""
    return _ID.sub("{id}", line.split("?", 1)[0])


def idle_window(sides: list[Side], seconds: float) -> None:
    """Every side idles at once: RSS by role over the whole window, API requests per
    minute over its part after BACK_OFF_SECONDS (all of it if the window is shorter)."""
    classifiers: dict[str, Classifier] = {}
    for side in sides:
        if (classify := side.classifier()) is not None:
            classifiers[side.key] = classify
    sampler = Sampler(classifiers)
    log(f"idle window: {seconds:.0f} s, nothing submitted")
    began = time.time()
    sampler.start()
    try:
        time.sleep(seconds)
    finally:
        sampler.stop()
    end = time.time()
    start = began + BACK_OFF_SECONDS if seconds > BACK_OFF_SECONDS * 1.5 else began
    for side in sides:
        side.result.memory = sampler.memory.get(side.key, {})
        lines = Counter(endpoint(r.line) for r in side.proxy.between(start, end))
        side.result.api = IdleApi(end - start, lines)
        rate = side.result.api.per_minute or 0.0
        log(f"{side.result.name}: {rate:.1f} API requests/min while idle")


def pickups(world: World, sides: list[Side], count: int, quiet_since: float) -> None:
    """``count`` rounds; in each, every side gets one ad-hoc run once it has been idle
    BACK_OFF_SECONDS (since its last run ended), and the run is awaited to its end."""
    deployments = {s.key: world.deploy(s.pool, RECORD, f"{s.pool}-pickup") for s in sides}
    busy_until = {s.key: quiet_since for s in sides}
    timeout = world.args.timeout
    for i in range(count):
        for side in sides:
            wait = busy_until[side.key] + BACK_OFF_SECONDS - time.time()
            if wait > 0:
                time.sleep(wait)
            marker = world.tmp / side.key / "pickups.executions"
            run_id = world.create(deployments[side.key], {"marker": str(marker)})
            final = str((world.wait_final([run_id], timeout).get(run_id) or {}).get("type"))
            busy_until[side.key] = time.time()
            run, when = world.run(run_id), entered(world.history(run_id))
            created = ts(run.get("created"))
            pick = Pickup(
                run_id,
                when["PENDING"] - created if created and "PENDING" in when else None,
                when["RUNNING"] - created if created and "RUNNING" in when else None,
                final,
            )
            side.result.pickups.append(pick)
            log(f"{side.result.name}: pickup {i + 1}/{count}: Pending after "
                f"{_s(pick.to_pending)}, Running after {_s(pick.to_running)}, {final}")  # fmt: skip


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def schedule(world: World, sides: list[Side], count: int) -> None:
    """Each side gets a deployment with a 30 s interval schedule; the sides' anchors are
    spread over the interval so that their runs never overlap. Waits for each side's
    first ``count`` runs to end, then deletes the deployments (and the runs they would
    still make); lateness is the Running state's time minus expected_start_time."""
    spacing = SCHEDULE_INTERVAL / max(len(sides), 1)
    # The first run falls 20 s ahead: Prefect's scheduler (every 5 s for new
    # deployments) has made it by then, and a poller with prefetch has seen it.
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    anchors, deployments = {}, {}
    for i, side in enumerate(sides):
        anchor = base + timedelta(seconds=spacing * i)
        spec = {"interval": SCHEDULE_INTERVAL, "anchor_date": anchor.isoformat(),
                "timezone": "UTC"}  # fmt: skip
        schedules = [{"schedule": spec, "active": True}]
        marker = world.tmp / side.key / "scheduled.executions"
        deployments[side.key] = world.deploy(
            side.pool, RECORD, f"{side.pool}-scheduled", schedules, {"marker": str(marker)}
        )
        anchors[side.key] = anchor.timestamp()
    last_due = {k: a + SCHEDULE_INTERVAL * (count - 1) for k, a in anchors.items()}
    log(f"schedule: {count} runs per side, every {SCHEDULE_INTERVAL:.0f} s, first at "
        f"{base:%H:%M:%S} UTC, sides {spacing:.0f} s apart")  # fmt: skip
    deadline = max(last_due.values()) + world.args.timeout
    made: dict[str, list[str]] = {}
    try:
        while time.time() < deadline:
            for side in sides:
                runs = world.runs_of(deployments[side.key])
                due = [r for r in runs if (ts(r.get("expected_start_time")) or math.inf)
                       <= last_due[side.key] + 1]  # fmt: skip
                if len(due) >= count and all(state_type(r) in FINAL for r in due[:count]):
                    made[side.key] = [str(r["id"]) for r in due[:count]]
            if len(made) == len(sides):
                break
            time.sleep(1.0)
    finally:
        for deployment in deployments.values():
            world.delete_deployment(deployment)
    for side in sides:
        ids = made.get(side.key, [])
        if len(ids) < count:
            side.result.notes.append(f"schedule: only {len(ids)} of {count} runs ended in time")
        for run in world.runs(ids):
            running = entered(world.history(str(run["id"]))).get("RUNNING")
            due_at = ts(run.get("expected_start_time"))
            side.result.scheduled.append(state_type(run))
            if running is not None and due_at is not None:
                side.result.lateness.append(running - due_at)
        late = ", ".join(f"{x:+.2f}" for x in side.result.lateness)
        log(f"{side.result.name}: scheduled runs started {late} s from due")


def burst(world: World, side: Side, concurrency: int) -> Burst:
    """Submit --runs runs at once (the floor starts claiming while they are created, as a
    worker would), wait for all to end, read them back with their state histories."""
    deployment = world.deploy(side.pool, RECORD, f"{side.pool}-burst")
    marker = world.tmp / side.key / f"burst-c{concurrency}.executions"
    marker.touch()
    feed: queue.Queue[str | None] = queue.Queue()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            side.drive(feed, concurrency, world.args.timeout)
        except Exception as exc:  # reported with the side's notes
            errors.append(exc)

    load_before = os.getloadavg()[0]
    driver = threading.Thread(target=drive, name="floor-driver", daemon=True)
    driver.start()
    log(f"{side.result.name}: burst of {world.args.runs} runs at concurrency {concurrency}")
    ids: list[str] = []
    try:
        for _ in range(world.args.runs):
            ids.append(world.create(deployment, {"marker": str(marker)}))
            feed.put(ids[-1])
    finally:
        # Even when a creation failed: what was created ends before the next side starts.
        feed.put(None)
        world.wait_final(ids, world.args.timeout)
        driver.join(timeout=world.args.timeout)
    for exc in errors:
        side.result.notes.append(f"burst C={concurrency}: {exc!r}")
    result = Burst(concurrency, world.runs(ids), {i: world.history(i) for i in ids})
    result.executions = sum(1 for line in marker.read_text().splitlines() if line)
    result.load = (load_before, os.getloadavg()[0])
    for run_id, history in result.histories.items():
        completed = entered(history).get("COMPLETED")
        if run_id in side.exits and completed is not None:
            result.lingers.append(side.exits[run_id] - completed)
    log(f"{side.result.name}: {result.completed}/{len(ids)} Completed, "
        f"{result.executions} executions, wall {result.wall():.1f} s")  # fmt: skip
    return result
