"""Warm or cold: whether a run may be forked from the warm process, or must start as a
new interpreter, and why. Pure: the warm launcher (agent/worker/warm.py) gathers the facts.

A forked run gets what a cold start gives only if nothing it asks for acts before the
first line of Python runs: its command must be the Prefect engine, and the variables the
interpreter (or the dynamic loader, or the C locale) reads at start must equal the warm
process's. PYTHONPATH is the exception: it only builds ``sys.path``, which each forked
run gets built afresh from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_START_PREFIXES = ("PYTHON", "LD_", "LC_")
_START_KEYS = frozenset({"LANG", "LANGUAGE"})
_REBUILT = frozenset({"PYTHONPATH"})  # rebuilt per forked run, see module doc


def start_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that act at interpreter start."""
    return {
        k: v
        for k, v in env.items()
        if k not in _REBUILT and (k in _START_KEYS or k.startswith(_START_PREFIXES))
    }


def cold_reason(
    argv: Sequence[str],
    engine_argv: Sequence[str],
    env: Mapping[str, str],
    warm_env: Mapping[str, str],
) -> str | None:
    """Why this run must start cold, or None when a warm fork gives it the same start.
    Names variables, never their values (they may be secrets)."""
    if list(argv) != list(engine_argv):
        return "the run sets `command`"
    mine, warm = start_vars(env), start_vars(warm_env)
    differ = sorted(k for k in mine.keys() | warm.keys() if mine.get(k) != warm.get(k))
    if differ:
        names = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        return f"the run sets {names}, read at interpreter start"
    return None


def packages_changed(stamps: Mapping[str, int], now: Mapping[str, int | None]) -> str | None:
    """Which import directory changed since the warm process started (a package was
    installed, upgraded or removed there), or None."""
    for directory, stamp in sorted(stamps.items()):
        if now.get(directory) != stamp:
            return f"the flow interpreter's packages in {directory} changed since it started"
    return None
