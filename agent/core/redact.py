"""Hiding credentials in URLs before they are printed or logged. Pure.

``http://user:pass@host/api`` -> ``http://user:***@host/api``. A user without a password
(``https://TOKEN@host``) is often a token, so it is hidden whole, as pip does.
"""

from __future__ import annotations

import re

MASK = "***"

# The userinfo is everything between "scheme://" and the last "@" of the authority
# (which ends at the first / ? or #): where urllib.parse and requests take it from.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@")
# In free text a URL also ends at whitespace.
_TEXT_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#]*)@")


def _hide(match: re.Match[str]) -> str:
    user, sep, _ = match["userinfo"].partition(":")
    shown = f"{user}:{MASK}" if sep else MASK
    return f"{match['scheme']}{shown}@"


def redact_url(url: str) -> str:
    """The URL with its password (or lone user token) replaced by ``***``."""
    return _URL_USERINFO.sub(_hide, url, count=1)


def redact_text(text: str) -> str:
    """Every URL in ``text`` (an error message, say) redacted as by :func:`redact_url`."""
    return _TEXT_USERINFO.sub(_hide, text)


def has_secret(url: str) -> bool:
    """True when the URL carries userinfo, which :func:`redact_url` would hide."""
    return redact_url(url) != url
