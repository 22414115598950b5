"""What importing agent.api.http and making a plain http:// request cost: checked in a
fresh interpreter, neither loads ssl, http.client, email, urllib.request or hashlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.http_support import Server, server

__all__ = ["server"]  # the fixture, imported for pytest to find

REPO = Path(__file__).resolve().parents[2]


# -- import cost ------------------------------------------------------------------------


def test_import_and_plain_request_stay_light(server: Server) -> None:
    code = f"""
import sys
import agent.api.http as http
HEAVY = ("ssl", "_ssl", "http.client", "email", "urllib.request", "hashlib", "_hashlib")
def heavy():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m in HEAVY)
assert not heavy(), ("import", heavy())
session = http.HttpSession(env={{}})
assert session.get({server.url + "/x"!r}, timeout=(2, 2)).status_code == 200
session.close()
assert not heavy(), ("request", heavy())
print("light")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "light"
