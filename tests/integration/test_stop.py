"""Stopping the poller: SIGTERM makes it exit 0 within a second, even while an API call
hangs (nothing is lost: every claim is written ahead and settled by the next poller)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

from tests.integration.conftest import Agent
from tests.integration.harness import wait_for


@contextlib.contextmanager
def silent_api() -> Iterator[str]:
    """An 'API' that accepts connections and never answers: every call hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_sigterm_exits_0_within_a_second_while_an_api_call_hangs(agent: Agent) -> None:
    with silent_api() as url:
        agent.start_poller(env={"PREFECT_API_URL": url})
        proc = agent.procs.popens[-1]
        # The banner is logged just before the first call, which then hangs (30 s timeout).
        wait_for(lambda: "agent agent" in agent.procs.log("poller"), 30, "the poller to start")
        time.sleep(1)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - sent
    assert code == 0
    assert took < 3, f"took {took:.1f}s"  # the deadline is 0.8 s; without it, 30 s
    assert "exiting without waiting for it" in agent.procs.log("poller")
