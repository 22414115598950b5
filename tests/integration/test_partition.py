"""A network partition, not a dead host: host A is cut off from Prefect while its run is
Running, another agent marks the run Crashed after --reap-after (host loss), and when A
can reach Prefect again it stops the flow it still runs there (SIGTERM, as for a
cancellation), and proposes nothing: the run stays Crashed. Without this the flow would
run on where Prefect shows it final, beside any retry of it elsewhere.

A's agent and its flow reach the real server through a TCP relay in this process, which
the test cuts (every connection dropped, new ones closed at once) and restores."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from agent.core import reap
from agent.worker.procid import runs_flow
from examples import demo
from tests.integration.conftest import Agent
from tests.integration.harness import wait_for

REAP_AFTER = 6.0
BEAT = {"AGENT_HEARTBEAT_SECONDS": "1"}  # hidden setting: a silent host is seen in seconds
REAP_CHECK = reap.check_every(REAP_AFTER)


class Relay(threading.Thread):
    """Forwards loopback TCP connections to ``target`` until cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.stopped = threading.Event()
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                conn.close()
                continue
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            conn.close()
            return
        pair = (conn, upstream)
        with self._lock:
            self._live.update(pair)
        try:
            while not self.cut.is_set():
                ready, _, _ = select.select(pair, [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is conn else conn).sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._live.difference_update(pair)
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def drop(self) -> None:
        """Cut: every open connection ends, every new one is closed at once."""
        self.cut.set()
        with self._lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.cut.clear()

    def stop(self) -> None:
        self.stopped.set()
        self.drop()
        self.listener.close()


@pytest.fixture
def relay(agent: Agent) -> Iterator[Relay]:
    parts = urlsplit(agent.env["PREFECT_API_URL"])
    assert parts.hostname is not None and parts.port is not None
    found = Relay((parts.hostname, parts.port))
    found.start()
    yield found
    found.stop()


def through(relay: Relay, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{relay.port}"))


def state(agent: Agent, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = demo.read_run(agent.client, run_id)["state"]
    return found


def messages(agent: Agent, run_id: str) -> list[tuple[str, str]]:
    """The run's state history, oldest first: (type, message)."""
    path = f"/flow_run_states/?flow_run_id={run_id}"
    history = sorted(agent.client.request("states", "GET", path), key=lambda s: s["timestamp"])
    return [(s["type"], s.get("message") or "") for s in history]


def test_a_cut_off_hosts_flow_reaped_meanwhile_is_stopped_once_it_can_reach_prefect(
    agent: Agent, relay: Relay
) -> None:
    a_spool = agent.tmp / "a-spool"
    a_env = {**BEAT, "PREFECT_API_URL": through(relay, agent.env["PREFECT_API_URL"])}
    agent.start_poller("--name", "host-a", "--label", "a", name="a", spool=a_spool, env=a_env)
    agent.start_worker(name="a-worker", spool=a_spool, env=a_env)
    agent.start_poller(
        "--name", "host-b", "--reap-after", f"{REAP_AFTER:.0f}", name="b",
        spool=agent.tmp / "b-spool", env=BEAT,
    )  # fmt: skip
    deployment = agent.deploy("sleeper", job_variables={"labels": ["a"]})
    run_id = agent.run(deployment, {"pause": 300})
    wait_for(lambda: state(agent, run_id).get("type") == "RUNNING", 90, "the run to be Running")

    relay.drop()
    wait_for(
        lambda: state(agent, run_id).get("type") == "CRASHED",
        REAP_AFTER + 6 * REAP_CHECK + 60,
        "host-b to mark the cut-off host's run Crashed",
    )
    reaped = str(state(agent, run_id)["message"])
    assert reaped.startswith(reap.LOST_PREFIX) and "agent 'host-a'" in reaped, reaped
    # The premise: cut off, host A cannot know, and its flow runs on.
    assert runs_flow(run_id)

    relay.restore()
    wait_for(lambda: not runs_flow(run_id), 60, "host A to stop the flow Prefect shows Crashed")
    wait_for((a_spool / "done" / f"{run_id}.json").exists, 30, "host A to settle the run")
    outcome = json.loads((a_spool / "done" / f"{run_id}.outcome").read_bytes())
    assert outcome["outcome"] == "crashed", outcome
    # What the user sees in Prefect: Crashed. Host A proposes nothing; the engine, given
    # SIGTERM as for a cancellation, reports its own Crashed over the reaper's (which the
    # run's state history keeps), and nothing is Cancelled.
    history = messages(agent, run_id)
    assert [t for t, _ in history].count("RUNNING") == 1, history
    assert history[-1][0] == "CRASHED", history
    assert ("CRASHED", reaped) in history, history
    assert all(t == "CRASHED" for t, _ in history[history.index(("CRASHED", reaped)) :])
    log = agent.procs.log("a")
    assert (
        f"flow run {run_id} was marked Crashed by another agent while agent host-a was cut "
        "off from Prefect: asked its worker to stop it"
    ) in log
    worker_log = agent.procs.log("a-worker")
    assert "was marked Crashed by another agent while this host was cut off" in worker_log
