"""The report: the machine, each side's settings, the figures side by side, then the
issue's targets for the agent (met / missed, with the value)."""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable

from ops.benchmark import targets
from ops.benchmark.results import CANCEL_WAIT_SECONDS, Burst, SideResult
from ops.benchmark.sampling import POLLER, SUPERVISORD, WARM_PARENT, WORKER, RoleMemory, mib
from ops.benchmark.targets import MISSED, Target, finite, percentile, ratio

ORDER = ("floor", "warm", "cold", "prefect")
AGENTS = ("warm", "cold")
Cell = Callable[[SideResult], str]


def pair(values: list[float]) -> str:
    """``p50 / p95 (n)`` in seconds; ``-`` when nothing was measured."""
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.2f} / {percentile(values, 0.95):.2f} (n={len(values)})"


def floor_wall(results: dict[str, SideResult], concurrency: int) -> float | None:
    floor = results.get("floor")
    burst = floor.bursts.get(concurrency) if floor else None
    return finite(burst.wall()) if burst else None


def burst_ratio(r: SideResult, results: dict[str, SideResult], c: int) -> float | None:
    burst = r.bursts.get(c)
    return ratio(burst.wall(), floor_wall(results, c)) if burst else None


def linger_share(results: dict[str, SideResult], c: int) -> tuple[float, float] | None:
    """(the floor's engines' p50 life after Completed, that as a multiple of the floor's
    time per run and slot): a slot is busy that long on every side, whatever launches
    it, so no side's burst ratio can go below it. None without the floor's figures."""
    floor = results.get("floor")
    burst = floor.bursts.get(c) if floor else None
    wall = floor_wall(results, c)
    if burst is None or wall is None or not burst.lingers or not burst.runs:
        return None
    linger = percentile(burst.lingers, 0.5)
    return linger, linger / (wall * c / len(burst.runs))


def pickup_values(r: SideResult, running: bool = False) -> list[float]:
    picked = [p.to_running if running else p.to_pending for p in r.pickups]
    return [x for x in picked if x is not None]


def cancel_cell(r: SideResult, waiting: bool) -> str:
    tried = [c for c in r.cancels if c.waiting == waiting]
    if not tried:
        return "-"
    done = r.cancel_seconds(waiting)
    missing = len(tried) - len(done)
    text = f"{percentile(done, 0.5):.2f} / {max(done):.2f} (n={len(done)}" if done else "(none"
    text += f", {missing} not within {CANCEL_WAIT_SECONDS:.0f} s" if missing else ""
    if waiting:  # the state it waited in: a Scheduled one the server cancels at once
        text += ", was " + "/".join(sorted({c.was.lower() for c in tried}))
    return text + ")"


def role_mib(r: SideResult, role: str) -> float | None:
    memory = r.memory.get(role)
    return memory.largest / 1024 if memory and memory.count else None


def memory_cell(r: SideResult, role: str) -> str:
    memory: RoleMemory | None = r.memory.get(role)
    if memory is None or not memory.count:
        return "-"
    each = sorted(memory.peaks.values())
    if len(each) == 1:
        return mib(each[0])
    return f"{mib(each[-1])} (x{len(each)}, smallest {mib(each[0])})"


def api_per_minute(r: SideResult) -> float | None:
    return r.api.per_minute if r.api else None


def burst_rows(concurrencies: list[int], results: dict[str, SideResult]) -> list[tuple[str, Cell]]:
    rows: list[tuple[str, Cell]] = []
    for c in concurrencies:

        def get(r: SideResult, c: int = c) -> Burst | None:
            return r.bursts.get(c)

        def done(r: SideResult, c: int = c) -> str:
            b = get(r, c)
            return f"{b.completed}/{len(b.runs)} ran {b.executions}x" if b else "-"

        def wall(r: SideResult, c: int = c) -> str:
            b = get(r, c)
            return "-" if b is None or math.isnan(b.wall()) else f"{b.wall():.1f}"

        def times_floor(r: SideResult, c: int = c) -> str:
            x = burst_ratio(r, results, c)
            return "-" if x is None else f"{x:.2f}x"

        def steps(r: SideResult, c: int = c) -> str:
            b = get(r, c)
            if b is None:
                return "-"
            claim, launch = b.between("SCHEDULED", "PENDING"), b.between("PENDING", "RUNNING")
            return f"{percentile(claim, 0.5):.2f} / {percentile(launch, 0.5):.2f}"

        def load(r: SideResult, c: int = c) -> str:
            b = get(r, c)
            return "-" if b is None else f"{b.load[0]:.1f} -> {b.load[1]:.1f}"

        def linger(r: SideResult, c: int = c) -> str:
            b = get(r, c)
            return pair(b.lingers) if b and b.lingers else "-"

        rows += [
            (f"burst C={c}: runs Completed, executions", done),
            (f"burst C={c}: machine's load average, start -> end", load),
            (f"burst C={c}: wall, first created -> last Completed (s)", wall),
            (f"burst C={c}: wall as a multiple of the floor's", times_floor),
            (f"burst C={c}: claim p50 / launch p50 (s)", steps),
            (f"burst C={c}: engine exits after Completed p50 / p95 (s)", linger),
        ]
    return rows


OTHER_ROWS: list[tuple[str, Cell]] = [
    ("idle pickup, created -> Pending p50 / p95 (s)", lambda r: pair(pickup_values(r))),
    ("idle pickup, created -> Running p50 / p95 (s)", lambda r: pair(pickup_values(r, True))),
    ("scheduled, due -> Running p50 / p95 (s)", lambda r: pair(r.lateness)),
    ("cancel running, Cancelling -> process gone p50 / max (s)",
     lambda r: cancel_cell(r, waiting=False)),
    ("cancel waiting, Cancelling -> Cancelled p50 / max (s)",
     lambda r: cancel_cell(r, waiting=True)),
    ("API requests per minute while idle",
     lambda r: "-" if (x := api_per_minute(r)) is None else f"{x:.1f}"),
    ("  and websocket messages sent per minute",
     lambda r: "-" if r.api is None or (x := r.api.messages_per_minute) is None
     else f"{x:.1f}"),
    ("idle RSS MiB, supervisord", lambda r: memory_cell(r, SUPERVISORD)),
    ("idle RSS MiB, poller", lambda r: memory_cell(r, POLLER)),
    ("idle RSS MiB, worker process (largest)", lambda r: memory_cell(r, WORKER)),
    ("idle RSS MiB, warm parent (largest)", lambda r: memory_cell(r, WARM_PARENT)),
]  # fmt: skip


def target_rows(
    results: dict[str, SideResult], concurrencies: list[int], prefect_at_defaults: bool
) -> list[tuple[Target, Callable[[SideResult], float | None]]]:
    rows: list[tuple[Target, Callable[[SideResult], float | None]]] = []
    for c, target in ((2, targets.BURST_C2), (4, targets.BURST_C4)):
        if c in concurrencies:
            rows.append((target, functools.partial(burst_ratio, results=results, c=c)))
    rows += [
        (targets.PICKUP_P50, lambda r: finite(percentile(pickup_values(r), 0.5))),
        (targets.PICKUP_P95, lambda r: finite(percentile(pickup_values(r), 0.95))),
        (targets.CANCEL_RUNNING_P50,
         lambda r: finite(percentile(r.cancel_seconds(False), 0.5))),
        (targets.SCHEDULED_P95,
         lambda r: finite(percentile([abs(x) for x in r.lateness], 0.95))),
    ]  # fmt: skip
    prefect = results.get("prefect")
    api = targets.api_target(api_per_minute(prefect) if prefect and prefect_at_defaults else None)
    if api is not None:
        rows.append((api, api_per_minute))
    rows += [(targets.WORKER_RSS, lambda r: role_mib(r, WORKER)),
             (targets.POLLER_RSS, lambda r: role_mib(r, POLLER))]  # fmt: skip
    return rows


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]
    for line in [header, *rows]:
        first, *rest = line
        cells = (x.rjust(w) for x, w in zip(rest, widths[1:], strict=True))
        print("  ".join([first.ljust(widths[0]), *cells]))


def print_report(
    results: dict[str, SideResult],
    args: argparse.Namespace,
    machine: list[str],
    prefect_at_defaults: bool,
) -> None:
    print()
    first, *more = args.concurrency
    print(f"local-agent benchmark: parts {','.join(args.parts)}; C={first} for every part"
          + (f", then C={','.join(map(str, more))} for bursts" if more else "")
          + f"; {args.runs} runs per burst")  # fmt: skip
    for line in machine:
        print(f"  {line}")
    columns = [results[k] for k in ORDER if k in results]
    for r in columns:
        print(f"{r.name}:")
        for line in r.settings:
            print(f"  {line}")
    print()
    rows = burst_rows(args.concurrency, results) + OTHER_ROWS
    table(
        ["", *(r.name for r in columns)],
        [[label, *(cell(r) for r in columns)] for label, cell in rows],
    )
    agents = [results[k] for k in AGENTS if k in results]
    if agents:
        print()
        trows = target_rows(results, args.concurrency, prefect_at_defaults)
        table(
            ["targets (the agent)", "limit", *(r.name for r in agents)],
            [[t.what, f"{t.limit:g}{t.unit}", *(t.cell(value(r)) for r in agents)]
             for t, value in trows],
        )  # fmt: skip
        for c, target in ((2, targets.BURST_C2), (4, targets.BURST_C4)):
            share = linger_share(results, c)
            missed = any(target.verdict(burst_ratio(r, results, c)) == MISSED for r in agents)
            if share is not None and missed:
                print(
                    f"burst at C={c}, why missed: a finished engine lives on {share[0]:.2f} s "
                    f"(p50) after Completed (Prefect's own heartbeat join, ops/benchmark.md); "
                    f"a slot is busy until its process exits, on every side: {share[1]:.2f}x "
                    "of the floor's time per run and slot, whatever launches it"
                )
        if "prefect" in results and not prefect_at_defaults:
            print("idle API target not judged: Prefect's worker did not run at its defaults")
        for r in agents:
            parent = r.memory.get(WARM_PARENT)
            size = memory_cell(r, WARM_PARENT) + " MiB" if parent and parent.count else "none"
            print(f"{r.name}: warm parent process RSS while idle (no target): {size}")
    for r in columns:
        if r.api and r.api.lines:
            top = ", ".join(f"{n}x {line}" for line, n in r.api.lines.most_common(5))
            print(f"{r.name} idle requests in {r.api.seconds:.0f} s: {top}")
    for r in columns:
        for note in r.notes:
            print(f"note, {r.name}: {note}")
