"""What each side measured: its bursts (runs as Prefect recorded them), ad-hoc pickups,
scheduled runs' lateness, cancellations, idle API requests and idle memory by role."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ops.benchmark.sampling import RoleMemory

Json = dict[str, Any]
CANCEL_WAIT_SECONDS = 20.0  # a cancellation that takes longer counts as not done


def ts(value: object) -> float | None:
    """An API timestamp as seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) and value else None


def entered(history: list[Json]) -> dict[str, float]:
    """When the run first entered each state type, from its state history."""
    when: dict[str, float] = {}
    for state in sorted(history, key=lambda s: str(s.get("timestamp"))):
        at = ts(state.get("timestamp"))
        if at is not None:
            when.setdefault(str(state.get("type")), at)
    return when


def state_type(run: Json) -> str:
    return str((run.get("state") or {}).get("type"))


@dataclass
class Burst:
    concurrency: int
    runs: list[Json] = field(default_factory=list)
    histories: dict[str, list[Json]] = field(default_factory=dict)  # run id -> its states
    executions: int = 0  # lines the flow wrote: each run must run exactly once
    load: tuple[float, float] = (math.nan, math.nan)  # 1-min load average, start and end
    # The floor only: per run, its engine process's exit (seen within 10 ms) minus its
    # Completed state's time: how long a slot stays busy after the run is over.
    lingers: list[float] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(1 for r in self.runs if state_type(r) == "COMPLETED")

    def wall(self) -> float:
        """First created to last Completed, by the server's timestamps."""
        created = [t for r in self.runs if (t := ts(r.get("created"))) is not None]
        ends = [t for r in self.runs if (t := ts(r.get("end_time"))) is not None]
        if not created or len(ends) < len(self.runs):
            return math.nan
        return max(ends) - min(created)

    def between(self, first: str, then: str) -> list[float]:
        """Per run, from entering state type ``first`` to entering ``then``."""
        out = []
        for history in self.histories.values():
            when = entered(history)
            if first in when and then in when:
                out.append(when[then] - when[first])
        return out


@dataclass
class Pickup:
    """One ad-hoc run created while its side was idle."""

    run_id: str
    to_pending: float | None  # created -> Pending (the claim)
    to_running: float | None  # created -> Running
    final: str


@dataclass
class Cancellation:
    run_id: str
    waiting: bool  # True: cancelled while it waited for a slot
    seconds: float | None  # running: Cancelling -> process gone; waiting: -> Cancelled
    final: str  # the run's state type at the end
    note: str = ""
    was: str = ""  # its state type when it was cancelled (a waiting run: SCHEDULED or PENDING)
    answered: str = ""  # the state the server answered Cancelling with


@dataclass
class IdleApi:
    """What the side sent through its proxy over an idle window: HTTP requests
    ("GET /api/...") and websocket data messages ("WS /api/..."), each -> how many."""

    seconds: float
    lines: Counter[str] = field(default_factory=Counter)

    def _rate(self, websocket: bool) -> float | None:
        n = sum(v for k, v in self.lines.items() if k.startswith("WS ") == websocket)
        return n * 60.0 / self.seconds if self.seconds > 0 else None

    @property
    def per_minute(self) -> float | None:
        """HTTP requests per minute (a websocket's upgrade is one)."""
        return self._rate(websocket=False)

    @property
    def messages_per_minute(self) -> float | None:
        """Websocket data messages sent per minute."""
        return self._rate(websocket=True)


@dataclass
class SideResult:
    key: str  # floor | warm | cold | prefect
    name: str  # the column's title
    settings: list[str] = field(default_factory=list)
    bursts: dict[int, Burst] = field(default_factory=dict)  # concurrency -> burst
    pickups: list[Pickup] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)  # due -> Running, per scheduled run
    scheduled: list[str] = field(default_factory=list)  # final state of each scheduled run
    cancels: list[Cancellation] = field(default_factory=list)
    api: IdleApi | None = None
    memory: dict[str, RoleMemory] = field(default_factory=dict)  # role -> its processes
    notes: list[str] = field(default_factory=list)  # errors and oddities, printed

    def cancel_seconds(self, waiting: bool) -> list[float]:
        return [c.seconds for c in self.cancels if c.waiting == waiting and c.seconds is not None]

    def ok(self) -> bool:
        """Every run that should have completed did, exactly once."""
        bursts = all(
            b.completed == len(b.runs) == b.executions and b.runs for b in self.bursts.values()
        )
        return (
            bursts
            and all(p.final == "COMPLETED" for p in self.pickups)
            and all(s == "COMPLETED" for s in self.scheduled)
        )

    def as_json(self) -> Json:
        body = asdict(self)
        body["api"] = (
            {"seconds": self.api.seconds, "lines": dict(self.api.lines)} if self.api else None
        )
        return body
