"""agent/core/redact.py: a password in a URL is never printed."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.core.redact import has_secret, redact_text, redact_url
from tests.unit.strategies import FAST


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@host/api", "http://user:***@host/api"),
        ("https://user:p%40ss:w@host:4200/api", "https://user:***@host:4200/api"),
        ("http://TOKEN@host/api", "http://***@host/api"),  # a lone user is often a token
        ("http://a:b@c@host/api?x=1", "http://a:***@host/api?x=1"),  # the last @ ends it
        ("http://host:4200/api", "http://host:4200/api"),
        ("http://host/api?next=http://u:p@other/", "http://host/api?next=http://u:***@other/"),
        ("not a url", "not a url"),
    ],
)
def test_a_password_in_a_url_is_shown_as_stars(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert has_secret(url) == (url != shown)


def test_every_url_in_an_error_message_is_redacted() -> None:
    message = (
        "read_work_pool: http://u:hunter2@h/api does not look like a Prefect API; "
        "and https://tok@h2/x too"
    )
    assert redact_text(message) == (
        "read_work_pool: http://u:***@h/api does not look like a Prefect API; "
        "and https://***@h2/x too"
    )


# What a URL's userinfo can hold unencoded (printable ASCII, no space) but the delimiters.
userinfo_chars = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="@/?#:"), min_size=1
)


@FAST
@given(userinfo_chars, userinfo_chars, st.sampled_from(["host", "h:1/api", "[::1]:4200/a?b#c"]))
@example("user", "pass", "host/api")
def test_no_password_survives_redaction(user: str, password: str, rest: str) -> None:
    secret = "PW" + password
    url = f"http://{user}:{secret}@{rest}"
    assert secret not in redact_url(url)
    assert secret not in redact_text(f"GET {url}: 503")
    assert redact_url(url).startswith(f"http://{user}:***@")
