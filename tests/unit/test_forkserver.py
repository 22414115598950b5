"""Warm launches, agent/worker/flowfork.py and forkserver.py: how a forked flow ends
(``run_main``, ``_exit_code``), what it is given in place of the warm process's view
(``become_flow``), and the control socket's framing (``send``, ``receive``).

Whatever touches the process (exit statuses, signals, atexit, the environment, sys.path)
runs in a child process, next to a real interpreter doing the same, so pytest's own
process is left alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.worker.flowfork import _exit_code
from agent.worker.forkserver import receive, send

# Without PYTHONUNBUFFERED, so that what is left in a buffer at exit shows.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "PYTHONPATH")}


# -- _exit_code: SystemExit's value as the interpreter turns it into an exit status ------


def test_exit_codes_are_those_the_interpreter_gives(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(None) == 0
    assert _exit_code(0) == 0
    assert _exit_code(3) == 3
    assert _exit_code(True) == 1
    assert _exit_code(256 + 5) == 5  # the low byte, as exit(2) keeps
    assert _exit_code(-1) == 255
    assert capsys.readouterr().err == ""
    assert _exit_code("a message") == 1
    assert _exit_code(2.5) == 1
    assert capsys.readouterr().err == "a message\n2.5\n"


# -- run_main: the end of a forked flow, next to the end of a real interpreter ----------

# The warm side: the body run by run_main in a fresh interpreter that then leaves with
# os._exit, so nothing of the interpreter's own exit (atexit, flushing, joining threads)
# happens but what run_main does.
RUN_MAIN = """
import os, sys
from agent.worker.flowfork import run_main
body = sys.argv[1]
os._exit(run_main(lambda: exec(body, {"__name__": "__main__"})))
"""

THREAD_THEN_ATEXIT = """
import atexit, threading, time
atexit.register(print, "atexit ran")
def late():
    time.sleep(0.3)
    print("thread ended")
threading.Thread(target=late).start()
print("main ended")
"""

ENDINGS = [
    pytest.param("print('done')", id="return"),
    pytest.param("raise SystemExit", id="SystemExit()"),
    pytest.param("import sys; sys.exit(None)", id="exit(None)"),
    pytest.param("import sys; sys.exit(3)", id="exit(3)"),
    pytest.param("raise SystemExit(261)", id="exit(261)"),
    pytest.param("raise SystemExit(-1)", id="exit(-1)"),
    pytest.param("raise SystemExit('bye: a message')", id="exit(message)"),
    pytest.param("raise ValueError('boom')", id="exception"),
    pytest.param("raise KeyboardInterrupt", id="KeyboardInterrupt"),
    pytest.param(THREAD_THEN_ATEXIT, id="threads-joined-then-atexit"),
    pytest.param("import sys; sys.stdout.write('no newline, buffered')", id="flushed"),
    pytest.param(
        "import sys\nsys.excepthook = lambda *a: print('hooked', file=sys.stderr)\n"
        "raise ValueError('boom')",
        id="excepthook",
    ),
]


def ended(argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def traceback_ends(stderr: str) -> tuple[str, str]:
    """A traceback's first and last lines: the frames between differ (run_main's own)."""
    lines = stderr.splitlines()
    return (lines[0], lines[-1]) if lines else ("", "")


@pytest.mark.parametrize("body", ENDINGS)
def test_a_flow_ends_as_the_interpreter_would_have_ended(body: str) -> None:
    cold = ended([sys.executable, "-c", body])
    warm = ended([sys.executable, "-c", RUN_MAIN, body])
    assert warm[:2] == cold[:2]
    if cold[2].startswith("Traceback"):
        assert traceback_ends(warm[2]) == traceback_ends(cold[2])
    else:
        assert warm[2] == cold[2]


@pytest.mark.parametrize("mode", ["w", "wb", "a"])
def test_a_file_the_flow_never_closed_keeps_what_was_written(tmp_path: Path, mode: str) -> None:
    # A flow module's global file: the interpreter's exit frees it, which flushes it.
    data = "b'kept'" if "b" in mode else "'kept'"
    body = (
        "import builtins\n"
        f"f = open({str(tmp_path / 'x')!r}, {mode!r}); f.write({data})\n"
        "builtins.kept_file = f  # alive until the very end, as a module's global\n"
    )
    for argv in ([sys.executable, "-c", body], [sys.executable, "-c", RUN_MAIN, body]):
        (tmp_path / "x").unlink(missing_ok=True)
        assert ended(argv)[0] == 0
        assert (tmp_path / "x").read_text() == "kept", argv[2][:20]


def test_the_endings_are_what_they_say() -> None:
    """The cold references themselves, so that the comparison above compares something."""
    assert ended([sys.executable, "-c", "raise SystemExit(261)"])[0] == 5
    assert ended([sys.executable, "-c", "raise KeyboardInterrupt"])[0] == -signal.SIGINT
    code, out, err = ended([sys.executable, "-c", RUN_MAIN, THREAD_THEN_ATEXIT])
    assert (code, out) == (0, "main ended\nthread ended\natexit ran\n")
    code, out, err = ended([sys.executable, "-c", RUN_MAIN, "raise ValueError('boom')"])
    assert code == 1
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith("ValueError: boom\n")
    code, out, err = ended([sys.executable, "-c", RUN_MAIN, "raise SystemExit('bye')"])
    assert (code, out, err) == (1, "", "bye\n")


# -- become_flow: the run's sys.path in place of the warm process's -------------------------

# Like the warm process: a fresh interpreter started with -c and without PYTHONPATH, with
# Prefect imported; it forks each case, and the child becomes the flow, except that the
# "engine" it runs writes down what it sees.
WARM_PARENT = """
import json, os, sys
base = [p for p in sys.path[1:] if p]
import prefect
from agent.worker import flowfork

def engine():
    with open(os.environ["AGENT_TEST_OUT"], "w") as f:
        json.dump({"path": sys.path, "orig_argv": sys.orig_argv}, f)

flowfork._run_engine = engine
for case in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        os._exit(flowfork.become_flow(case["env"], base))
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, case
"""
# What a cold start sees: `python -m <module>` in the run's cwd and environment.
COLD_MODULE = """
import json, os, sys
with open(os.environ["AGENT_TEST_OUT"], "w") as f:
    json.dump({"path": sys.path, "orig_argv": sys.orig_argv}, f)
"""
PATHS = {
    "absolute": "{a}:{b}",
    "none": None,
    "empty": "",
    "relative": "src:.",
    "repeated": "{a}:{b}:{a}",
    "empty-entry": "{a}::{b}",
}


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """For each PATHS case, what the cold start and the forked flow saw: {"cold:<case>":
    ..., "warm:<case>": ...}."""
    root = tmp_path_factory.mktemp("become_flow")
    a, b = root / "a", root / "b"
    cases = []
    for name, template in PATHS.items():
        cwd = root / name
        cwd.mkdir()
        (cwd / "agent_test_cold_start.py").write_text(COLD_MODULE)
        env = dict(ENV)
        if template is not None:
            env["PYTHONPATH"] = template.format(a=a, b=b)
        cold = subprocess.run(
            [sys.executable, "-m", "agent_test_cold_start"],
            env={**env, "AGENT_TEST_OUT": str(root / f"cold-{name}.json")},
            cwd=cwd,
            timeout=60,
        )
        assert cold.returncode == 0
        cases.append(
            {"cwd": str(cwd), "env": {**env, "AGENT_TEST_OUT": str(root / f"warm-{name}.json")}}
        )
    warm = subprocess.run(
        [sys.executable, "-c", WARM_PARENT, json.dumps(cases)],
        env=ENV,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert warm.returncode == 0, warm.stderr
    yield {
        f"{how}:{name}": json.loads((root / f"{how}-{name}.json").read_text())
        for how in ("cold", "warm")
        for name in PATHS
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute",
        "none",
        "empty",
        "relative",
        "repeated",
        "empty-entry",
    ],
)
def test_a_forked_flow_gets_the_sys_path_a_cold_start_gets(
    views: dict[str, dict[str, Any]], case: str
) -> None:
    assert views[f"warm:{case}"]["path"] == views[f"cold:{case}"]["path"]


def test_the_cold_sys_path_starts_with_the_cwd_then_pythonpath(
    views: dict[str, dict[str, Any]],
) -> None:
    path = views["cold:absolute"]["path"]
    assert Path(path[0]).name == "absolute"
    assert [Path(p).name for p in path[1:3]] == ["a", "b"]


# -- framing: send and receive over the control socket -----------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    mine, theirs = socket.socketpair()
    with mine, theirs:
        yield mine, theirs


def test_a_message_goes_through_with_its_file_descriptors(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    mine, theirs = pair
    read_fd, write_fd = os.pipe()
    other_r, other_w = os.pipe()
    try:
        send(mine, {"run_dir": "/x", "env": {"A": "é\n"}, "n": [1, None]}, [write_fd, other_w])
        body, fds = receive(theirs)
        assert body == {"run_dir": "/x", "env": {"A": "é\n"}, "n": [1, None]}
        assert len(fds) == 2 and write_fd not in fds and other_w not in fds  # new descriptors
        os.write(fds[0], b"through the passed fd")
        os.write(fds[1], b"and the second")
        for fd in fds:
            os.close(fd)
        assert os.read(read_fd, 100) == b"through the passed fd"
        assert os.read(other_r, 100) == b"and the second"
    finally:
        for fd in (read_fd, write_fd, other_r, other_w):
            os.close(fd)


def test_a_message_without_descriptors_and_the_end(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    mine, theirs = pair
    send(mine, {"started": 1234})
    assert receive(theirs) == ({"started": 1234}, [])
    mine.close()
    assert receive(theirs) == (None, [])


def test_a_message_larger_than_one_read_comes_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    mine, theirs = pair
    body = {"env": {f"K{i}": "v" * 100 for i in range(3000)}}  # about 330 kB
    sender = threading.Thread(target=send, args=(mine, body))
    sender.start()
    try:
        assert receive(theirs) == (body, [])
    finally:
        sender.join()


def test_a_message_whose_bytes_arrive_late_is_waited_for(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    mine, theirs = pair
    data = json.dumps({"exited": 7, "code": 3}).encode()
    frame = len(data).to_bytes(4, "big") + data

    def trickle() -> None:
        for piece in (frame[:2], frame[2:9], frame[9:]):
            mine.sendall(piece)
            time.sleep(0.05)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        assert receive(theirs) == ({"exited": 7, "code": 3}, [])
    finally:
        sender.join()


def test_messages_sent_back_to_back_are_received_one_by_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    mine, theirs = pair
    send(mine, {"started": 1})
    send(mine, {"exited": 1, "code": 0})
    assert receive(theirs) == ({"started": 1}, [])
    assert receive(theirs) == ({"exited": 1, "code": 0}, [])
