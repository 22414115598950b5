"""What became of the runs a soak created: it reads each run's state and state history
from Prefect, the executions file and the spool, and counts. Per run created:

- executed twice: the run's id is on two or more lines of the executions file. Nothing
  the soak does excuses that: the agent must never start a run twice.
- not final: the run is not COMPLETED, FAILED, CRASHED or CANCELLED at the end.
- lost: the run never executed (no line) and the soak never killed a flow of that run.
  Final or not: a run ended Crashed without ever running, or still Scheduled or Pending
  at the end, is lost. (A run stuck unexecuted counts as lost and as not final.)
- ended wrongly: the run executed once but ended other than COMPLETED, and the soak
  never killed a flow of that run. The flow cannot fail on its own, so the agent (or the
  engine under it) declared a healthy run Crashed/Failed/Cancelled.
- in the spool twice (per spec, not per run): a spec still in tmp/, new/ or cur/ while
  the same run's spec is in done/ or failed/: the agent's spool is inconsistent. A spec
  merely left in tmp/new/cur is reported (and the temp dir kept), not counted.

"Killed a flow of that run" means worker-flow-kill9 or flow-kill9 (see
``ops.soak.chaos``) sent SIGKILL to that run's shim or flow process: such a run is
expected to end Crashed, with one line (the flow wrote its line before the kill) or none
(killed while the engine was still starting, before the flow's code ran), or Completed
(the kill landed after the engine reported it, or before the flow existed and the
adopting worker then started it). The report lists these runs and their states
separately ("flows killed by the soak") and counts none of them as lost or ended
wrongly; a second execution still counts. The other kinds never kill a flow, so after
them every run must be Completed, executed once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.api.client import PrefectClient
from agent.core.errors import TransientApiError
from examples import demo
from ops.benchmark.console import log

STATE_CHUNK = 100  # runs per /flow_runs/filter call (the API's default limit is 200)
API_PATIENCE_SECONDS = 300.0  # how long the soak's own API calls retry a busy server


# -- accounting (pure) -----------------------------------------------------------------


def parse_executions(text: str) -> list[str]:
    """Flow run ids from the executions file, one per line, in order (a line is
    ``<id> <pid> <time>``; only the id matters)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


@dataclass
class Accounting:
    """What became of the runs a soak created. See the module docstring for each list."""

    created: int
    states: dict[str, int]  # final state type (or "NOT FINAL: <type>") -> runs
    executions: int  # lines of the executions file that name a run of this soak
    executed: int  # runs executed at least once
    flows_killed: dict[str, int]  # runs whose flow the soak killed: state -> runs
    lost: list[str] = field(default_factory=list)
    twice: dict[str, int] = field(default_factory=dict)  # run -> executions (>= 2)
    not_final: dict[str, str] = field(default_factory=dict)  # run -> state type
    wrong: dict[str, str] = field(default_factory=dict)  # run -> state type
    strangers: list[str] = field(default_factory=list)  # lines naming no run created
    spool_twice: list[str] = field(default_factory=list)  # "cur/<id>" also in done|failed
    spool_leftovers: list[str] = field(default_factory=list)  # "cur/<id>" etc.

    @property
    def failures(self) -> int:
        return (
            len(self.lost)
            + len(self.twice)
            + len(self.not_final)
            + len(self.wrong)
            + len(self.spool_twice)
        )


def account(
    run_ids: Sequence[str],
    states: Mapping[str, str | None],
    executions: Sequence[str],
    flows_killed: Collection[str],
    spool: Mapping[str, Collection[str]] | None = None,
) -> Accounting:
    """``states``: each run's state type now (None or missing: unknown); ``executions``:
    run ids as read from the executions file; ``flows_killed``: runs whose shim or flow
    process the soak sent SIGKILL to; ``spool``: the run ids in each spool folder (tmp,
    new, cur, done, failed) at the end."""
    count = Counter(executions)
    created = set(run_ids)
    breakdown: Counter[str] = Counter()
    killed_states: Counter[str] = Counter()
    acc = Accounting(
        created=len(run_ids),
        states={},
        executions=sum(n for run, n in count.items() if run in created),
        executed=sum(1 for run in run_ids if count[run] > 0),
        flows_killed={},
        strangers=sorted(run for run in count if run not in created),
    )
    for run in run_ids:
        state = states.get(run) or "UNKNOWN"
        final = state in demo.FINAL
        breakdown[state if final else f"NOT FINAL: {state}"] += 1
        killed = run in flows_killed
        if killed:
            killed_states[state] += 1
        if count[run] >= 2:
            acc.twice[run] = count[run]
        if not final:
            acc.not_final[run] = state
        if count[run] == 0 and not killed:
            acc.lost.append(run)
        elif count[run] == 1 and final and state != "COMPLETED" and not killed:
            acc.wrong[run] = state
    acc.states = dict(breakdown.most_common())
    acc.flows_killed = dict(killed_states.most_common())
    spool = spool or {}
    retired = {run for folder in ("done", "failed") for run in spool.get(folder, ())}
    for folder in ("tmp", "new", "cur"):
        for run in sorted(spool.get(folder, ())):
            acc.spool_leftovers.append(f"{folder}/{run}")
            if run in retired:
                acc.spool_twice.append(f"{folder}/{run}")
    return acc


def run_failures(acc: Accounting) -> list[str]:
    """ "N run(s) lost" and so on, for each kind of wrong end that happened (the soak's
    and the fleet's verdicts both start from it)."""
    reasons = []
    for label, items in (
        ("lost", acc.lost),
        ("executed twice", acc.twice),
        ("not final", acc.not_final),
        ("ended wrongly", acc.wrong),
    ):
        if items:
            reasons.append(f"{len(items)} run(s) {label}")
    return reasons


def verdict(acc: Accounting, actions: int) -> tuple[int, list[str]]:
    """Exit status and why: 1 if any run was lost, executed twice, not final or ended
    wrongly, if a spec is in the spool twice (tmp/new/cur and done/failed at once: the
    agent's spool is inconsistent), or if the soak made no action at all (then it
    proved nothing). A spec merely left in tmp/new/cur is shown, not counted."""
    reasons = run_failures(acc)
    if acc.spool_twice:
        reasons.append(f"{len(acc.spool_twice)} spec(s) in the spool twice")
    if actions == 0:
        reasons.append("no kill or restart was made: nothing was soaked")
    return (1 if reasons else 0), reasons


def breakdown(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def render(acc: Accounting, kills: Mapping[str, int], info: Sequence[tuple[str, str]]) -> str:
    """The report: ``info`` lines first (settings, times), then the figures."""
    code, reasons = verdict(acc, sum(kills.values()))
    rows: list[tuple[str, str]] = [
        *info,
        ("runs created", str(acc.created)),
        ("final states", breakdown(acc.states)),
        ("executions recorded", f"{acc.executions} ({acc.executed} runs executed)"),
        (
            "flows killed by the soak",
            f"{sum(acc.flows_killed.values())} runs ({breakdown(acc.flows_killed)}), "
            "expected, not counted as lost",
        ),
        ("kills and restarts", f"{sum(kills.values())} ({breakdown(kills)})"),
    ]
    if acc.strangers:
        rows.append(("lines naming no run", f"{len(acc.strangers)} ({', '.join(acc.strangers)})"))
    rows += [
        ("runs lost", str(len(acc.lost))),
        ("runs executed twice", str(len(acc.twice))),
        ("runs not final", str(len(acc.not_final))),
        ("runs ended wrongly", str(len(acc.wrong))),
        ("specs in the spool twice", str(len(acc.spool_twice))),
        ("result", f"FAIL: {'; '.join(reasons)}" if code else "PASS"),
    ]
    width = max(len(label) for label, _ in rows) + 1
    lines = [f"{label + ':':<{width}} {value}" for label, value in rows]
    for label, runs in (
        ("lost", {run: "" for run in acc.lost}),
        ("executed twice", {run: f"{n} executions" for run, n in acc.twice.items()}),
        ("not final", acc.not_final),
        ("ended wrongly", acc.wrong),
        ("in the spool twice", {where: "(also in done/ or failed/)" for where in acc.spool_twice}),
        ("left in the spool", {where: "" for where in acc.spool_leftovers}),
    ):
        for run, what in runs.items():
            lines.append(f"  {label}: {run} {what}".rstrip())
    return "\n".join(lines)


# -- Prefect ---------------------------------------------------------------------------


T = TypeVar("T")


def patiently(what: str, call: Callable[[], T]) -> T:
    """``call``, retried for up to API_PATIENCE_SECONDS while the server answers 5xx or
    not at all (each try already retries for the client's own 20 s). A busy SQLite server
    answers 503 "database is locked" now and then under this load."""
    deadline = time.monotonic() + API_PATIENCE_SECONDS
    while True:
        try:
            return call()
        except TransientApiError as exc:
            if time.monotonic() > deadline:
                raise
            log(f"{what}: {exc}; trying again")
            time.sleep(2.0)


def read_states(client: PrefectClient, run_ids: Sequence[str]) -> dict[str, str | None]:
    """Each run's state type, asked in chunks (the API returns at most 200 runs a call)."""
    states: dict[str, str | None] = {}
    for i in range(0, len(run_ids), STATE_CHUNK):
        chunk = list(run_ids[i : i + STATE_CHUNK])
        body = {"flow_runs": {"id": {"any_": chunk}}, "limit": len(chunk)}
        filtered = functools.partial(client.filter_flow_runs, body)
        for run in patiently("read states", filtered):
            states[run.id] = run.state_type
    return states


def history(client: PrefectClient, run_id: str) -> list[str]:
    path = f"/flow_run_states/?flow_run_id={run_id}"
    states = patiently("read a history", lambda: client.request("states", "GET", path))
    return [f"{s['type']}:{s.get('name')}" for s in sorted(states, key=lambda s: s["timestamp"])]


def state_paths(histories: Iterable[Sequence[str]]) -> dict[str, int]:
    """How many runs went each way, e.g. ``PENDING>RUNNING>COMPLETED``: state types in
    order, SCHEDULED (and Late, its kind) left out. Two PENDINGs: claimed twice."""
    paths = Counter(
        ">".join(t for t, _, _ in (s.partition(":") for s in h) if t != "SCHEDULED")
        for h in histories
    )
    return dict(paths.most_common())


# -- the spool ------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


SPOOL_FOLDERS = ("tmp", "new", "cur", "done", "failed")


def spool_listing(spool: Path) -> dict[str, list[str]]:
    """The run ids of the specs in each spool folder."""
    return {
        folder: sorted(p.stem for p in (spool / folder).glob("*.json"))
        if (spool / folder).is_dir()
        else []
        for folder in SPOOL_FOLDERS
    }


def spool_leftovers(spool: Path) -> list[str]:
    """Specs still in tmp/, new/ or cur/ (``cur/<id>``): none once every run has ended."""
    listing = spool_listing(spool)
    return [f"{folder}/{run}" for folder in ("tmp", "new", "cur") for run in listing[folder]]


def spool_counts(spool: Path) -> dict[str, int]:
    return {folder: len(runs) for folder, runs in spool_listing(spool).items()}
