"""The events stream goes through the proxy that API calls use (agent/api/proxies.py):
the fake Prefect events server of events_support.py behind the CONNECT proxy of
test_http.py, both on 127.0.0.1."""

from __future__ import annotations

import logging

import pytest

from tests.unit.events_support import (
    STILL_UNAVAILABLE,
    UNAVAILABLE,
    Harness,
    closed_port,
    ended,
    event,
    eventually,
    harness,
    said,
)
from tests.unit.test_http import Proxy, proxy

__all__ = ["harness", "proxy"]  # the fixtures, imported for pytest to find

SECRET = "pr0xy-s3cret"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the proxies of the machine running the tests (lowercase ones win)."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_with_http_proxy_set_the_stream_tunnels_through_it_and_events_still_wake(
    harness: Harness, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    fake = harness.prefect([event("Scheduled")])
    stream, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.wakes == 1)
    assert stream.status()["connected"] is True
    assert [head.split("\r\n")[0] for head in proxy.seen] == [
        f"CONNECT 127.0.0.1:{fake.port} HTTP/1.1"
    ]
    assert fake.paths == ["/api/events/out"]  # the upgrade went through the tunnel


def test_uppercase_https_proxy_is_not_used_for_an_http_api(
    harness: Harness, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variable of the API URL's scheme, as for API calls, not websockets' own pick
    (which would take https_proxy for ws:// too)."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    fake = harness.prefect([event("Scheduled")])
    _, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.wakes == 1)
    assert proxy.seen == []


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*"])
def test_with_no_proxy_covering_the_host_the_stream_connects_directly(
    harness: Harness, proxy: Proxy, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "nothing.example")  # the lowercase one wins
    monkeypatch.setenv("no_proxy", no_proxy)
    fake = harness.prefect([event("Scheduled")])
    stream, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.wakes == 1)
    assert stream.status()["connected"] is True
    assert proxy.seen == []


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("http://pu:{secret}@127.0.0.1:{port}", "Refused"),  # nothing listens there
        ("socks5h://pu:{secret}@127.0.0.1:{port}", "python-socks"),  # not shipped
        ("http://pu:{secret}@127.0.0.1:{port}/path", "isn't a valid proxy"),  # quotes it
        # A bare "/" in the password: no URL parser sees a userinfo there.
        ("http://pu:{secret}/x@127.0.0.1:{port}", "isn't a valid proxy"),
    ],
    ids=["closed-port", "socks", "invalid", "slash-in-password"],
)
def test_an_unusable_proxy_with_credentials_is_said_once_and_its_password_never_shown(
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    error: str,
) -> None:
    monkeypatch.setattr("agent.settings.defaults.EVENTS_RETRY_MAX", 0.2)  # retries, quickly
    caplog.set_level(logging.DEBUG, logger="agent")
    proxy_url = template.format(secret=SECRET, port=closed_port())
    monkeypatch.setenv("http_proxy", proxy_url)
    fake = harness.prefect([event("Scheduled")])
    stream, calls = harness.stream(fake.port)
    assert eventually(lambda: len(said(caplog, STILL_UNAVAILABLE)) >= 2)
    assert not ended(stream)
    [unavailable] = said(caplog, UNAVAILABLE)
    assert unavailable.levelno == logging.WARNING
    assert error in unavailable.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no unexpected bug
    status = stream.status()
    assert status["connected"] is False
    assert isinstance(status["last_error"], str) and error in status["last_error"]
    assert SECRET not in str(status)
    for record in caplog.records:
        assert SECRET not in record.getMessage() + (record.exc_text or ""), record
    assert SECRET not in caplog.text
    assert fake.opened_at == []  # never around the proxy
    assert (calls.wakes, calls.cancels) == (0, 0)
