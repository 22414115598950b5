"""What one side measured: its runs as Prefect recorded them, its samples, its
/api/health timings, and the figures derived from them."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ops.benchmark.sampling import Sample


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


@dataclass
class Health:
    latencies: list[float] = field(default_factory=list)  # seconds
    codes: Counter[str] = field(default_factory=Counter)

    def cell(self) -> str:
        if not self.latencies:
            return "-"
        ms = [x * 1000 for x in self.latencies]
        codes = " ".join(f"{n}x{code}" for code, n in sorted(self.codes.items()))
        return f"{statistics.median(ms):.1f} / {max(ms):.1f} ({codes})"


@dataclass
class Result:
    name: str
    settings: list[str]
    processes: str  # what "own" RSS covers
    runs: list[dict[str, Any]] = field(default_factory=list)
    executions: int = 0
    submitted_at: float = 0.0
    idle: list[Sample] = field(default_factory=list)
    burst: list[Sample] = field(default_factory=list)
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run -> states
    own_peaks: str = ""
    shims: tuple[int, float] = (0, 0.0)  # shims started during the burst, their CPU s
    health_up: Health | None = None
    health_down: Health | None = None

    @property
    def completed(self) -> int:
        return sum(1 for r in self.runs if (r.get("state") or {}).get("type") == "COMPLETED")

    def times(self, key: str) -> list[float]:
        return [t for r in self.runs if (t := ts(r.get(key))) is not None]

    def wall(self) -> float:
        ends = self.times("end_time")
        return max(ends) - min(self.times("created")) if ends else float("nan")

    def start_delays(self) -> list[float]:
        """Scheduled time (expected_start_time) to start_time (entering Running)."""
        out = []
        for r in self.runs:
            scheduled, started = ts(r.get("expected_start_time")), ts(r.get("start_time"))
            if scheduled is not None and started is not None:
                out.append(started - scheduled)
        return out

    def between(self, first: str, then: str) -> list[float]:
        """Per run, from entering state type ``first`` to entering ``then``."""
        out = []
        for states in self.histories.values():
            when = {s["type"]: ts(s["timestamp"]) for s in reversed(states)}  # earliest wins
            a, b = when.get(first), when.get(then)
            if a is not None and b is not None:
                out.append(b - a)
        return out

    def latencies(self) -> list[float]:
        """Created to end_time."""
        out = []
        for r in self.runs:
            created, ended = ts(r.get("created")), ts(r.get("end_time"))
            if created is not None and ended is not None:
                out.append(ended - created)
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings,
            "runs": self.runs,
            "executions": self.executions,
            "histories": self.histories,
            "own_peaks": self.own_peaks,
            "health_up": self.health_up.__dict__ if self.health_up else None,
            "health_down": self.health_down.__dict__ if self.health_down else None,
            "samples": {
                "idle": [s.__dict__ for s in self.idle],
                "burst": [s.__dict__ for s in self.burst],
            },
        }
