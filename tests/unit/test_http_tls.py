"""agent.api.http over TLS, against a server on 127.0.0.1 with a throwaway self-signed
certificate: trusted through REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, and the errors for an
unreadable bundle or an unknown certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api.http import HttpConnectionError, HttpError, HttpSession
from tests.unit.http_support import Server, T, cert, https, tls_server

__all__ = ["cert", "tls_server"]  # the fixtures, imported for pytest to find


# -- TLS --------------------------------------------------------------------------------


def test_https_with_ca_bundle(tls_server: Server, cert: tuple[Path, Path]) -> None:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        s = HttpSession(env={var: str(cert[0])})
        try:
            for host in ("127.0.0.1", "localhost"):
                seen = s.request("POST", f"{https(tls_server, host)}/x", json=[1], timeout=T)
                assert seen.json()["body"] == "[1]"
        finally:
            s.close()


def test_unreadable_ca_bundle_names_the_variable(tmp_path: Path) -> None:
    s = HttpSession(env={"CURL_CA_BUNDLE": str(tmp_path / "missing.pem")})
    with pytest.raises(HttpError, match="CA certificates named by CURL_CA_BUNDLE"):
        s.get("https://127.0.0.1:1/", timeout=T)


def test_https_unknown_certificate_says_what_to_do(tls_server: Server) -> None:
    s = HttpSession(env={})
    try:
        with pytest.raises(HttpConnectionError, match=r"certificate.*REQUESTS_CA_BUNDLE"):
            s.get(https(tls_server), timeout=T)
    finally:
        s.close()
