"""The report: each side's settings, the machine, and the figures side by side."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from ops.benchmark.results import Result
from ops.benchmark.sampling import Sample, mib


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def memory_cell(samples: list[Sample], group: str, kind: str = "rss") -> str:
    """Peak / mean over the samples of the group's summed RSS (or PSS), MiB."""
    values = [getattr(x, kind)[group] for x in samples if group in getattr(x, kind)]
    if not values or not any(values):
        return "-"
    return f"{mib(max(values))} / {mib(statistics.fmean(values))}"


def cpu_cell(samples: list[Sample], group: str) -> str:
    """CPU seconds the group's processes used over the window, and as % of one core."""
    if len(samples) < 2 or samples[-1].at <= samples[0].at or group not in samples[0].cpu:
        return "-"
    used = samples[-1].cpu[group] - samples[0].cpu[group]
    return f"{used:.2f} ({100 * used / (samples[-1].at - samples[0].at):.1f}%)"


def p50_max(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {max(values, default=float('nan')):.1f}"


def throughput(r: Result, runs: int) -> str:
    wall = r.wall()
    return f"{runs / wall * 60:.1f}" if wall > 0 else "-"  # NaN > 0 is False


def peak_count(samples: list[Sample], group: str) -> int:
    return max((x.count.get(group, 0) for x in samples), default=0)


def start_delay(r: Result) -> str:
    delays = r.start_delays()
    p50, p90 = percentile(delays, 0.5), percentile(delays, 0.9)
    return f"{p50:.1f} / {p90:.1f} / {max(delays, default=float('nan')):.1f}"


def latency(r: Result) -> str:
    e2e = r.latencies()
    return f"{percentile(e2e, 0.5):.1f} / {percentile(e2e, 0.9):.1f}"


Cell = Callable[[Result, int], str]  # (result, --runs) -> table cell

ROWS: list[tuple[str, Cell]] = [
    ("runs Completed", lambda r, n: f"{r.completed}/{n}"),
    ("flow executions recorded", lambda r, n: str(r.executions)),
    ("wall time, first created -> last Completed (s)", lambda r, n: f"{r.wall():.1f}"),
    ("throughput (runs/min)", throughput),
    ("start delay p50 / p90 / max (s)", lambda r, n: start_delay(r)),
    ("end-to-end latency p50 / p90 (s)", lambda r, n: latency(r)),
    ("  Scheduled -> Pending (claim) p50 / max (s)",
     lambda r, n: p50_max(r.between("SCHEDULED", "PENDING"))),
    ("  Pending -> Running (launch) p50 / max (s)",
     lambda r, n: p50_max(r.between("PENDING", "RUNNING"))),
    ("  Running -> Completed (flow) p50 / max (s)",
     lambda r, n: p50_max(r.between("RUNNING", "COMPLETED"))),
    ("flows running at once (peak seen)", lambda r, n: str(peak_count(r.burst, "flows"))),
    ("own processes measured",
     lambda r, n: f"{r.processes} ({peak_count(r.burst, 'own')})"),
    ("own RSS while idle, peak / mean (MiB)", lambda r, n: memory_cell(r.idle, "own")),
    ("own RSS during burst, peak / mean (MiB)", lambda r, n: memory_cell(r.burst, "own")),
    ("own PSS during burst, peak / mean (MiB)",
     lambda r, n: memory_cell(r.burst, "own", "pss")),
    ("own CPU s while idle (% of a core)", lambda r, n: cpu_cell(r.idle, "own")),
    ("own CPU s during burst (% of a core)", lambda r, n: cpu_cell(r.burst, "own")),
    ("supervisord RSS during burst, peak / mean (MiB)",
     lambda r, n: memory_cell(r.burst, "supervisord")),
    ("supervisord CPU s during burst", lambda r, n: cpu_cell(r.burst, "supervisord")),
    ("per-run shims, summed RSS peak / mean (MiB)",
     lambda r, n: memory_cell(r.burst, "shims")),
    ("per-run shims, CPU s in all (shims seen)",
     lambda r, n: f"{r.shims[1]:.2f} ({r.shims[0]})" if r.shims[0] else "-"),
    ("/api/health, server up: median / max ms",
     lambda r, n: r.health_up.cell() if r.health_up else "-"),
    ("/api/health, server stopped: median / max ms",
     lambda r, n: r.health_down.cell() if r.health_down else "-"),
]  # fmt: skip


def print_report(results: list[Result], args: argparse.Namespace, machine: list[str]) -> None:
    print()
    print(f"local-agent vs Prefect process worker: {args.runs} runs, concurrency "
          f"{args.concurrency}, after {args.idle:.0f} s idle")  # fmt: skip
    for line in machine:
        print(f"  {line}")
    for result in results:
        print(f"{result.name} settings:")
        for line in result.settings:
            print(f"  {line}")
        if result.own_peaks:
            print(f"  own processes, peak RSS MiB: {result.own_peaks}")
    print()
    by_name = {r.name: r for r in results}
    columns = [by_name[name] for name in ("local-agent", "prefect process") if name in by_name]
    cells = [[cell(r, args.runs) for _, cell in ROWS] for r in columns]
    width = max(len(label) for label, _ in ROWS)
    widths = [
        max(len(r.name), *(len(c) for c in col)) for r, col in zip(columns, cells, strict=True)
    ]
    print(
        "  ".join([" " * width, *(r.name.rjust(w) for r, w in zip(columns, widths, strict=True))])
    )
    for i, (label, _) in enumerate(ROWS):
        values = [col[i].rjust(w) for col, w in zip(cells, widths, strict=True)]
        print("  ".join([label.ljust(width), *values]))
