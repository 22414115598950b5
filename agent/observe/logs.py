"""One log line format for every agent process: time, level, role[pid], flow run, logger,
message; or the same fields as one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(role)s[%(process)d]%(run)s %(name)s: %(message)s"

# Text lines: every control character (C0, DEL, C1) and the Unicode line and paragraph
# separators are escaped, so a value from outside (a run name, a server message) can
# neither start a line of its own nor move the terminal's cursor.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """One line of printable text: ``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\u2028``."""
    return text.translate(_ESCAPES)


# The flow run the current thread is working on; every line logged meanwhile carries it.
_current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("run", default=None)


@contextlib.contextmanager
def run_context(flow_run_id: str) -> Iterator[None]:
    token = _current_run.set(flow_run_id)
    try:
        yield
    finally:
        _current_run.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        run = _current_run.get()
        record.flow_run_id = run
        record.run = f" run={run}" if run else ""
        return True


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT with everything but a traceback escaped onto one line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Called for the line itself; the traceback (exc_info) is added after, as it is.
        return escape(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """Stable keys: time, level, role, pid, flow_run_id, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": getattr(record, "role", None),
            "pid": record.process,
            "flow_run_id": getattr(record, "flow_run_id", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        # JSON escapes C0 controls itself; these three stay raw with ensure_ascii=False,
        # and str.splitlines() (and some log shippers) break lines at them.
        text = json.dumps(body, ensure_ascii=False)
        return (
            text.replace("\x85", "\\u0085")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )


def setup(level: str, role: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs every retry at WARNING; our own retry log says it better.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
