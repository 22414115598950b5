"""Which proxy the environment names for a URL, as requests and curl read it. Pure.

``http_proxy`` / ``https_proxy`` (lowercase wins, even empty), then ``all_proxy``;
``no_proxy`` lists hosts, domains, IPs and CIDR blocks to reach directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit

DEFAULT_PORT = {"http": 80, "https": 443}


def digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _env(env: Mapping[str, str], name: str) -> tuple[str, str]:
    """(variable, value): the lowercase variable when set, even empty, else the uppercase."""
    for key in (name, name.upper()):
        if key in env:
            return key, env[key].strip()
    return name, ""


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port
        addr, _, rest = entry[1:].partition("]")
        return addr, int(rest[1:]) if rest[:1] == ":" and digits(rest[1:]) else None
    name, sep, port = entry.partition(":")
    if sep and ":" not in port and digits(port):
        return name, int(port)
    return entry, None


def bypasses(host: str, port: int, no_proxy: str) -> bool:
    """True when ``no_proxy`` says to reach host:port directly: ``*`` for all, a name
    matching the host or a domain it is in (with or without a leading dot), an IP or CIDR
    block holding an IP host; any entry may end in ``:port``."""
    if not no_proxy.strip():
        return False
    import ipaddress  # only once a no_proxy is set

    host = host.strip("[]").rstrip(".").lower()
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.replace(" ", ",").split(","):
        name, want = _split_port(raw.strip().lower())
        if name == "*":
            return True
        if not name or (want is not None and want != port):
            continue
        if ip is not None:
            with contextlib.suppress(ValueError):
                if ip in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        name = name.lstrip("*.").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_var(url: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(the variable that names it, the proxy URL) for ``url``, or None: directly."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORT.get(scheme, 0)
    except ValueError:
        port = 0
    if bypasses(parts.hostname or "", port, _env(env, "no_proxy")[1]):
        return None
    for name in (f"{scheme}_proxy", "all_proxy"):
        var, value = _env(env, name)
        if value:  # a bare host:port is an http:// proxy, as for requests and curl
            return var, value if "://" in value else f"http://{value}"
    return None


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy URL that ``env`` names for ``url``, or None to connect directly."""
    found = proxy_var(url, env)
    return found[1] if found else None
