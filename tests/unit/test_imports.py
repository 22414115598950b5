"""Each process role imports only what it uses (issue 12: a worker within 25 MiB).

What a role's process has imported is read from a fresh interpreter's ``sys.modules``
after it imports what that role's entry point imports; ops/benchmark measures the RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Large modules no worker uses: HTTP libraries (the agent has its own small client),
# TLS (only for an https API), prometheus_client's exposition (the poller's /metrics),
# the events stream's websockets, and the poller's own modules.
NOT_IN_A_WORKER = (
    "requests",
    "urllib3",
    "tenacity",
    "http.client",
    "http.server",
    "email",
    "ssl",
    "urllib.request",
    "hashlib",
    "prometheus_client.exposition",
    "websockets",
    "supervisor.childutils",
    "agent.poller",
    "agent.observe.httpd",
    "agent.observe.exposition",
)


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(f"{name}.") for m in modules)


@pytest.fixture(scope="module")
def worker_modules() -> set[str]:
    # What `agent worker` imports before it runs: the CLI, then its wiring (late).
    return imported_after("import agent.cli.main, agent.cli.worker_wiring")


@pytest.mark.parametrize("heavy", NOT_IN_A_WORKER)
def test_a_worker_process_does_not_import(worker_modules: set[str], heavy: str) -> None:
    assert not loaded(worker_modules, heavy)


def test_the_probe_sees_what_the_poller_imports() -> None:
    # The same probe finds these in the poller: it is not blind.
    poller = imported_after("import agent.cli.main, agent.cli.wiring, agent.observe.exposition")
    for name in ("agent.poller", "websockets", "prometheus_client.exposition"):
        assert loaded(poller, name), name


def test_a_takes_record_digest_is_sha256_as_before() -> None:
    # Records written by earlier versions (hashlib's sha256) must still match their spec.
    import hashlib

    from agent.spool import takes

    for data in (b"", b"{}", bytes(range(256)) * 40):
        assert takes._digest(data) == hashlib.sha256(data).hexdigest()
