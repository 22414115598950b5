"""Host loss: which runs another agent of the pool holds although that agent has gone
silent for good. Pure: the poller's reap duty gathers the facts (the pool's worker
heartbeats and its runs in Pending or Running with the labels each claim puts on them)
and proposes what this decides through the reporter.

A run is reaped when all of these hold:
- it is Pending or Running and labelled with the agent name and host that claimed it;
- that agent is not this one on this host (this host's own runs are the stranded duty's);
- the agent's last heartbeat (or, without any, the run's state) is older than
  ``reap_after``, and older than two of its heartbeat intervals;
- the run's state is older than ``reap_after`` too (a claim made just before a silence).

The Crashed it gets carries a transition id made from the run's current state id, so
that two agents reaping the same run at once propose the same transition: Prefect takes
the first and rejects the second as a duplicate (PreventDuplicateTransitions), and a
final state reached meanwhile (the flow's own end) refuses both.

A host that was only cut off (a network partition) reads that Crashed when it can reach
Prefect again (``reaped``), and its worker stops the run's processes: a run Prefect shows
final must not run on where nothing watches it, and beside a retry of it elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.core.claim import HOST_LABEL, WORKER_LABEL
from agent.core.lifecycle import Proposal, crashed
from agent.core.states import FlowRun, RunState, StateType
from agent.settings import defaults

_NAMESPACE = uuid.UUID("6f1c3c3e-3f0e-4c55-9a43-3c4f1f0b7a11")  # local-agent's own
LIVE = (StateType.PENDING, StateType.RUNNING)
LOST_PREFIX = "Flow run infrastructure lost with its host: "  # every reaper's Crashed


@dataclass(frozen=True)
class Beat:
    """A worker of the pool as Prefect keeps it: its name (the agent's) and heartbeat."""

    name: str
    last: float | None  # unix time of its last heartbeat
    interval: float | None = None  # the heartbeat period it announced


@dataclass(frozen=True)
class Lost:
    run_id: str
    state_id: str | None
    agent: str
    host: str
    silent_for: float  # seconds since the agent's last sign of life


def stale_agents(beats: Sequence[Beat], now: float, reap_after: float, me: str) -> frozenset[str]:
    """Names of the pool's agents silent for longer than ``reap_after`` (never ``me``).
    Cheap: one call's worth of facts, so the runs are read only when this is not empty."""
    return frozenset(
        b.name for b in beats if b.name != me and _silence(b, now) > _patience(b, reap_after)
    )


def lost_runs(
    runs: Sequence[FlowRun],
    beats: Sequence[Beat],
    now: float,
    reap_after: float,
    me: tuple[str, str],
) -> list[Lost]:
    """The runs to mark Crashed; ``me`` is this agent's (name, host)."""
    if reap_after <= 0:
        return []
    by_name: Mapping[str, Beat] = {b.name: b for b in beats}
    lost: list[Lost] = []
    for run in runs:
        state = run.state
        agent, host = run.labels.get(WORKER_LABEL), run.labels.get(HOST_LABEL)
        if state is None or state.type not in LIVE or not agent or not host:
            continue
        if (agent, host) == me or state.timestamp is None:
            continue
        if agent == me[0]:
            continue  # one name, two hosts: this agent's own heartbeat hides the other's
        beat = by_name.get(agent, Beat(agent, None))
        silent = now - (beat.last if beat.last is not None else state.timestamp)
        if silent <= _patience(beat, reap_after) or now - state.timestamp <= reap_after:
            continue
        lost.append(Lost(run.id, state.id, agent, host, silent))
    return lost


def name_shared(runs: Sequence[FlowRun], me: tuple[str, str]) -> dict[str, str]:
    """Other hosts whose agent claims under this agent's name: host -> one of its runs.
    The pool's worker record (and so the heartbeat) is per name, so the loss of either
    host would never be noticed."""
    found: dict[str, str] = {}
    for run in runs:
        host = run.labels.get(HOST_LABEL)
        if run.labels.get(WORKER_LABEL) == me[0] and host and host != me[1]:
            found.setdefault(host, run.id)
    return found


def check_every(reap_after: float) -> float:
    """How often the reap duty looks: a tenth of ``reap_after`` (a lost host's runs are
    Crashed within 1.1x of it), between REAP_CHECK_SECONDS and REAP_CHECK_MAX_SECONDS,
    so that an idle pool's agents ask little of the server (once a minute by default)."""
    return max(defaults.REAP_CHECK_SECONDS, min(defaults.REAP_CHECK_MAX_SECONDS, reap_after / 10))


def proposal(lost: Lost, me: tuple[str, str], reap_after: float) -> Proposal:
    message = (
        f"{LOST_PREFIX}agent {lost.agent!r} on {lost.host} "
        f"has sent no heartbeat for {lost.silent_for:.0f}s (--reap-after {reap_after:.0f}s); "
        f"marked Crashed by agent {me[0]!r} on {me[1]}."
    )
    key = f"reap:{lost.run_id}:{lost.state_id or ''}"
    return crashed(message, transition_id=str(uuid.uuid5(_NAMESPACE, key)))


def reaped(state: RunState | None) -> bool:
    """Whether ``state`` is a reaper's Crashed. The host it names was cut off, not dead,
    when its poller reads this: its worker must stop the run's processes, and report
    nothing: the run stays Crashed (its engine, given SIGTERM, may report a Crashed of its
    own over this one; the state history keeps both)."""
    return (
        state is not None
        and state.type is StateType.CRASHED
        and state.message.startswith(LOST_PREFIX)
    )


def _silence(beat: Beat, now: float) -> float:
    return float("inf") if beat.last is None else now - beat.last


def _patience(beat: Beat, reap_after: float) -> float:
    # Never fewer than two missed heartbeats, whatever --reap-after says.
    return max(reap_after, 2 * (beat.interval or 0.0))
