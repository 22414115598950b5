"""The agent's own log lines: one format for every process, with role and flow run id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent.observe import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_line_has_role_pid_run_and_logger(captured: io.StringIO) -> None:
    logs.setup("INFO", "agent-worker_01", stream=captured)
    log = logging.getLogger("agent.worker.loop")
    log.info("outside")
    with logs.run_context("run-123"):
        log.info("inside %s", "a run")
    log.debug("hidden at INFO")
    first, second = captured.getvalue().splitlines()
    assert first.endswith(f"INFO    agent-worker_01[{_pid()}] agent.worker.loop: outside")
    assert second.endswith(f"agent-worker_01[{_pid()}] run=run-123 agent.worker.loop: inside a run")


def test_json_lines_have_stable_keys(captured: io.StringIO) -> None:
    logs.setup("debug", "agent", "json", captured)
    log = logging.getLogger("agent.poller.loop")
    with logs.run_context("r-9"):
        log.debug("claimed %d", 1)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(x) for x in captured.getvalue().splitlines()]
    assert lines[0]["message"] == "claimed 1"
    assert lines[0]["flow_run_id"] == "r-9"
    assert set(lines[0]) == {"time", "level", "role", "pid", "flow_run_id", "logger", "message"}
    assert (lines[0]["level"], lines[0]["role"], lines[0]["logger"]) == (
        "DEBUG",
        "agent",
        "agent.poller.loop",
    )
    assert lines[1]["flow_run_id"] is None
    assert "ValueError: boom" in lines[1]["exception"]


def test_run_context_is_per_thread(captured: io.StringIO) -> None:
    import threading

    logs.setup("INFO", "agent", "json", captured)
    log = logging.getLogger("t")
    with logs.run_context("main-run"):
        thread = threading.Thread(target=lambda: log.info("other thread"))
        thread.start()
        thread.join()
    assert json.loads(captured.getvalue().splitlines()[0])["flow_run_id"] is None


def _pid() -> int:
    import os

    return os.getpid()
