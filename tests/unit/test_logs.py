"""The agent's own log lines: one format for every process, with role and flow run id."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- forged lines ------------------------------------------------------------------------

FORGED = "evil\n2099-01-01 00:00:00,000 ERROR   agent[1] agent.poller.loop: forged"


def test_a_run_name_with_a_newline_cannot_start_a_line_in_the_text_log(
    captured: io.StringIO,
) -> None:
    logs.setup("INFO", "agent", stream=captured)
    log = logging.getLogger("agent.poller.loop")
    with logs.run_context("run\nid"):
        log.info("flow run %s (%s) claimed", "r-1", FORGED)
        log.warning("server said: %s", "bad\r\x1b[2Jthing\x85more\u2028end\tx")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    assert not any(line.startswith("2099") for line in lines)
    assert r"(evil\n2099-01-01 00:00:00,000 ERROR   agent[1] agent.poller.loop: forged)" in lines[0]
    assert r" run=run\nid " in lines[0]
    assert lines[1].endswith(r"server said: bad\r\x1b[2Jthing\x85more\u2028end\tx")


def test_a_traceback_keeps_its_lines_in_the_text_log(captured: io.StringIO) -> None:
    logs.setup("INFO", "agent", stream=captured)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("failed for %s", "a\nb")
    text = captured.getvalue()
    assert r"failed for a\nb" in text
    assert "\nTraceback (most recent call last):\n" in text
    assert text.rstrip().endswith("ValueError: boom")


def test_a_run_name_with_line_breaks_stays_inside_its_json_log_line(
    captured: io.StringIO,
) -> None:
    logs.setup("INFO", "agent", "json", captured)
    with logs.run_context("run\u2028id"):
        logging.getLogger("t").info("claimed %s", FORGED + "\x85\u2029")
    (line,) = captured.getvalue().splitlines()  # str.splitlines breaks at \x85 and \u2028 too
    body = json.loads(line)
    assert body["message"] == "claimed " + FORGED + "\x85\u2029"
    assert body["flow_run_id"] == "run\u2028id"


@settings(max_examples=200, database=None, deadline=None)
@given(st.text())
def test_any_message_is_one_line_without_control_characters_in_the_text_log(message: str) -> None:
    escaped = logs.escape(message)
    assert len(escaped.splitlines()) <= 1
    # Cc: C0, DEL and C1 controls; Zl, Zp: the Unicode line and paragraph separators.
    assert not [c for c in escaped if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
