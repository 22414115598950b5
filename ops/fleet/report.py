"""What became of the fleet's runs, and the figures: the soak's accounting
(``ops.soak.accounting``: lost, executed twice, not final, ended wrongly) over the runs'
final states and the executions file all hosts share, plus the runs reaped, throughput,
claim conflicts, API requests per host, the server's CPU and PostgreSQL's connections.

A run hit by a host kill (held by the host when it was killed: in its spool or Pending
or Running under its name) may end Crashed: the soak's "flows killed" rule applies, it
is neither lost nor ended wrongly (a second execution still counts). "Reaped" runs are
those Crashed with the reap duty's message (another host marked them Crashed because
their host went silent): a correct, final outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agent.api.client import PrefectClient
from ops.soak.accounting import Accounting, breakdown, patiently, run_failures

STATE_CHUNK = 100
REAPED_MARK = "infrastructure lost with its host"


def read_runs(client: PrefectClient, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each run as the API returns it (raw JSON), asked in chunks."""
    runs: dict[str, dict[str, Any]] = {}
    for i in range(0, len(run_ids), STATE_CHUNK):
        chunk = list(run_ids[i : i + STATE_CHUNK])
        body = {"flow_runs": {"id": {"any_": chunk}}, "limit": len(chunk)}

        def call(body: dict[str, Any] = body) -> Any:
            return client.request("filter_flow_runs", "POST", "/flow_runs/filter", body)

        for run in patiently("read runs", call):
            runs[str(run["id"])] = run
    return runs


def state_of(run: Mapping[str, Any] | None) -> dict[str, Any]:
    state = (run or {}).get("state")
    return state if isinstance(state, dict) else {}


def reaped(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(
        run_id
        for run_id, run in runs.items()
        if state_of(run).get("type") == "CRASHED"
        and REAPED_MARK in str(state_of(run).get("message") or "")
    )


def when(text: object) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def throughput(runs: Mapping[str, Mapping[str, Any]]) -> tuple[float, float] | None:
    """(runs per minute, seconds) from the first run created to the last one final."""
    created = [t for r in runs.values() if (t := when(r.get("created"))) is not None]
    ended = [t for r in runs.values() if (t := when(state_of(r).get("timestamp"))) is not None]
    if not created or not ended or max(ended) <= min(created):
        return None
    seconds = max(ended) - min(created)
    return len(runs) / seconds * 60.0, seconds


def verdict(acc: Accounting, kills: int, server_restarts: int) -> tuple[int, list[str]]:
    """1 if a run was lost, executed twice, not final or ended wrongly, or if the fleet
    killed no host or never restarted the server (then it proved less than it says)."""
    reasons = run_failures(acc)
    if kills == 0:
        reasons.append("no host was killed")
    if server_restarts == 0:
        reasons.append("the server was not restarted")
    return (1 if reasons else 0), reasons


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def figures(
    acc: Accounting,
    runs: Mapping[str, Mapping[str, Any]],
    measured: Mapping[str, Any],
) -> list[tuple[str, str]]:
    """The table's rows, from the accounting and what the sampler measured."""
    gone = reaped(runs)
    rate = throughput(runs)
    per_run = measured["conflicts"] / acc.created if acc.created else 0.0
    conns = measured.get("pg_connections")
    restricted = Counter(
        state_of(runs.get(r)).get("type") or "UNKNOWN" for r in measured["restricted"]
    )
    return [
        ("runs created", str(acc.created)),
        ("runs lost", str(len(acc.lost))),
        ("runs executed twice", str(len(acc.twice))),
        ("runs not final", str(len(acc.not_final))),
        ("runs ended wrongly", str(len(acc.wrong))),
        ("runs waiting for their host", "0 (runs are restricted only to hosts that come back)"),
        ("runs reaped", f"{len(gone)} (Crashed by another host after their host was lost)"),
        ("runs by final state", breakdown(acc.states)),
        (
            "runs hit by a host kill",
            f"{sum(acc.flows_killed.values())} ({breakdown(acc.flows_killed)})",
        ),
        ("runs restricted to a host", f"{sum(restricted.values())} ({breakdown(restricted)})"),
        ("executions recorded", f"{acc.executions} ({acc.executed} runs executed)"),
        (
            "throughput",
            "n/a"
            if rate is None
            else f"{rate[0]:.1f} runs/min ({rate[1]:.0f} s first created to last final)",
        ),
        (
            "claim conflicts",
            f"{measured['conflicts']:.0f} ({per_run:.3f} per run; counted until each "
            "host's last scrape: a killed host loses what it counted since)",
        ),
        (
            "API requests/host/min",
            f"idle before {fmt(measured['api_idle_before'])}, busy "
            f"{fmt(measured['api_busy'])}, idle after {fmt(measured['api_idle_after'])}",
        ),
        (
            "server CPU (% of one core)",
            f"busy {fmt(measured['cpu_busy'], 0, '%')}, idle after "
            f"{fmt(measured['cpu_idle_after'], 0, '%')}, whole run "
            f"{fmt(measured['cpu_all'], 0, '%')}",
        ),
        (
            "PostgreSQL CPU (% of one core)",
            "n/a (SQLite: in the server's process)"
            if conns is None
            else f"busy {fmt(measured['db_cpu_busy'], 0, '%')}, idle after "
            f"{fmt(measured['db_cpu_idle_after'], 0, '%')}",
        ),
        (
            "PostgreSQL connections",
            "n/a (SQLite)" if conns is None else f"max {conns[0]}, mean {conns[1]:.1f}",
        ),
    ]


def render(info: Sequence[tuple[str, str]], rows: Sequence[tuple[str, str]], result: str) -> str:
    table = [*info, *rows, ("result", result)]
    width = max(len(label) for label, _ in table) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in table)
