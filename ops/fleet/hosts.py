"""One "host" of the fleet: local-agent under its own supervisord, in its own UTS
namespace (``unshare --uts``, so that ``socket.gethostname()`` and the run label
``local-agent.host`` differ per host), with its own name, labels, spool, run directory,
metrics endpoint and process tag. Killing the host is ``kill -9`` of every process that
carries its tag: supervisord, the poller, the workers, the shims and the flows."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from agent.core.claim import WORKER_LABEL
from ops.soak.accounting import spool_leftovers
from tests.integration.harness import REPO, Procs, Supervisor, kill_tagged, tagged_pids

START_TIMEOUT = 120.0  # a loaded 2-core machine starts supervisord slowly
_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def unshare_works() -> bool:
    """``unshare --uts`` with a host name of its own (needs root or user namespaces)."""
    import subprocess

    probe = subprocess.run(
        ["unshare", "--uts", "sh", "-c", "hostname fleet-probe && hostname"],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "fleet-probe"


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each name's value summed over its label sets, from Prometheus text format."""
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match and match.group(1) in sums:
            with contextlib.suppress(ValueError):
                sums[match.group(1)] += float(match.group(3))
    return sums


@dataclass
class Host:
    index: int  # 1..K
    root: Path  # this host's directory in the fleet's temp dir
    base_env: dict[str, str]  # the fleet's environment, without PREFECT_*/AGENT_*
    agent_env: dict[str, str]  # API URL, credential, pool, timings: the same for all hosts
    port: int  # its health/metrics endpoint
    workers: int
    alive: bool = False
    dead_for_good: bool = False
    kills: int = 0
    procs: Procs = field(init=False)
    sup: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        for sub in ("run", "prefect-home", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.base_env, self.root / "logs")  # its own tag
        self.sup = Supervisor(self.procs, self.run_dir, self.env)

    @property
    def name(self) -> str:
        return f"fleet-host-{self.index}"

    @property
    def label(self) -> str:
        return f"host-{self.index}"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.agent_env,
            "PREFECT_HOME": str(self.root / "prefect-home"),
            "PREFECT__CLOUD__AGENT__NAME": self.name,
            "PREFECT__CLOUD__AGENT__LABELS": self.label,
            "AGENT_WORKERS": str(self.workers),
            "AGENT_SPOOL_DIR": str(self.spool),
            "AGENT_RUN_DIR": str(self.run_dir),
            "AGENT_ADDRESS": self.address,
        }

    def start(self) -> None:
        """supervisord (in a UTS namespace named after the host), then ``start agent``:
        the poller, which starts the workers. Does not wait for them."""
        for stale in ("supervisor.sock", "supervisord.pid"):
            (self.run_dir / stale).unlink(missing_ok=True)  # left by a kill -9
        conf = REPO / "supervisord.conf"
        script = f"hostname {self.name} && exec supervisord -c {conf}"
        result = self.procs.run(["unshare", "--uts", "sh", "-c", script], self.env)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: supervisord: {result.stderr}{result.stdout}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            started = self.sup.ctl("start", "agent")
            if started.returncode == 0 or "ALREADY_STARTED" in started.stdout:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: start agent: {started.stdout}{started.stderr}")
            time.sleep(1.0)
        self.alive = True

    def running(self) -> bool:
        """The poller and every worker RUNNING under supervisord."""
        states = list(self.sup.status().values())
        return states == ["RUNNING"] * (self.workers + 1)

    def kill(self) -> int:
        """kill -9 every process of this host (again until none is left: one may fork
        meanwhile). Returns how many processes were killed."""
        self.alive = False
        self.kills += 1
        killed: set[int] = set()
        for _ in range(20):
            pids = kill_tagged(self.procs.tag)
            if not pids:
                break
            killed.update(pids)
            time.sleep(0.1)
        return len(killed)

    def drop_spool(self) -> None:
        """The host's disk is lost: its spool goes (run it only when it is dead)."""
        shutil.rmtree(self.spool, ignore_errors=True)

    def in_flight(self) -> list[str]:
        """Runs in this host's spool that have not ended (tmp/, new/, cur/)."""
        return [where.split("/", 1)[1] for where in spool_leftovers(self.spool)]

    def metrics(self) -> dict[str, float] | None:
        """Claim conflicts and API requests so far, from its /metrics; None if it does not
        answer (down, or busy for more than 5 s)."""
        try:
            reply = requests.get(f"{self.address}/metrics", timeout=5)
        except requests.RequestException:
            return None
        if reply.status_code != 200:
            return None
        names = ("agent_claim_conflicts_total", "agent_api_request_duration_seconds_count")
        sums = metric_sums(reply.text, names)
        return {"conflicts": sums[names[0]], "requests": sums[names[1]]}

    def shutdown(self) -> None:
        """A clean stop, if it is up; what is left is killed by pid in ``close``."""
        if self.alive:
            with contextlib.suppress(Exception):
                self.sup.shutdown()
        self.alive = False

    def close(self) -> list[int]:
        """Kill by pid whatever of this host is left; returns the survivors (none)."""
        self.procs.close()
        return tagged_pids(self.procs.tag)


def runs_of(runs: list[dict[str, object]], host: Host) -> list[str]:
    """Of raw flow runs, those labelled as claimed by ``host`` (its agent name)."""
    out = []
    for run in runs:
        labels = run.get("labels")
        if isinstance(labels, dict) and labels.get(WORKER_LABEL) == host.name:
            out.append(str(run["id"]))
    return out
