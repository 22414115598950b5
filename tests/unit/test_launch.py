"""agent/core/launch.py: whether a run may be forked warm, and why not, as plain data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.core.launch import cold_reason, packages_changed, start_vars
from tests.unit.strategies import FAST, SECRET, secret_values

ENGINE = ["/venv/bin/python", "-m", "prefect.engine"]
WARM = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "HOME": "/root"}


def run_env(**changes: str) -> dict[str, str]:
    return {**WARM, **changes}


# -- start_vars --------------------------------------------------------------------------


def test_start_vars_are_those_the_interpreter_loader_and_locale_read_at_start() -> None:
    env = {
        "PYTHONHASHSEED": "0",
        "PYTHONSAFEPATH": "1",
        "LD_PRELOAD": "/x.so",
        "LC_ALL": "C",
        "LC_CTYPE": "C.UTF-8",
        "LANG": "en_US.UTF-8",
        "LANGUAGE": "en",
        "PYTHONPATH": "/rebuilt/per/run",
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_HOME": "/home",
        "TZ": "UTC",
        "MY_VAR": "x",
        "PATH": "/bin",
        "PY": "not a prefix match",
    }
    assert start_vars(env) == {
        "PYTHONHASHSEED": "0",
        "PYTHONSAFEPATH": "1",
        "LD_PRELOAD": "/x.so",
        "LC_ALL": "C",
        "LC_CTYPE": "C.UTF-8",
        "LANG": "en_US.UTF-8",
        "LANGUAGE": "en",
    }


# -- cold_reason -------------------------------------------------------------------------


def test_a_run_that_only_sets_what_python_reads_later_is_forked_warm() -> None:
    env = run_env(
        PREFECT_LOGGING_LEVEL="DEBUG",
        PREFECT_HOME="/elsewhere",
        PREFECT_API_URL="http://x/api",
        TZ="Asia/Tokyo",
        MY_VAR="x",
        PYTHONPATH="/a:/b",  # rebuilt for each forked run
        HOME="/tmp",
    )
    assert cold_reason(ENGINE, ENGINE, env, WARM) is None
    assert cold_reason(tuple(ENGINE), list(ENGINE), WARM, WARM) is None


def test_a_run_with_its_own_command_starts_cold() -> None:
    for argv in (
        ["/venv/bin/python", "-X", "dev", "-m", "prefect.engine"],
        ["/other/python", "-m", "prefect.engine"],
        ["sh", "-c", "python -m prefect.engine"],
        ENGINE[:2],
    ):
        assert cold_reason(argv, ENGINE, WARM, WARM) == "the run sets `command`"


def test_the_command_is_checked_before_the_variables() -> None:
    env = run_env(PYTHONHASHSEED="1")
    assert cold_reason(["python"], ENGINE, env, WARM) == "the run sets `command`"


def test_a_start_variable_set_changed_or_unset_by_the_run_starts_it_cold() -> None:
    why = "the run sets {}, read at interpreter start"
    assert cold_reason(ENGINE, ENGINE, run_env(PYTHONHASHSEED="1"), WARM) == why.format(
        "PYTHONHASHSEED"
    )
    assert cold_reason(ENGINE, ENGINE, run_env(LANG="C"), WARM) == why.format("LANG")
    assert cold_reason(ENGINE, ENGINE, run_env(LD_LIBRARY_PATH="/l"), WARM) == why.format(
        "LD_LIBRARY_PATH"
    )
    unset = {k: v for k, v in WARM.items() if k != "PYTHONUNBUFFERED"}
    assert cold_reason(ENGINE, ENGINE, unset, WARM) == why.format("PYTHONUNBUFFERED")
    # An empty value is a value: PYTHONOPTIMIZE= is not PYTHONOPTIMIZE unset.
    assert cold_reason(ENGINE, ENGINE, run_env(PYTHONOPTIMIZE=""), WARM) == why.format(
        "PYTHONOPTIMIZE"
    )


def test_the_reason_names_three_variables_sorted_then_counts_the_rest() -> None:
    two = run_env(PYTHONHASHSEED="1", LD_PRELOAD="/x.so")
    assert cold_reason(ENGINE, ENGINE, two, WARM) == (
        "the run sets LD_PRELOAD, PYTHONHASHSEED, read at interpreter start"
    )
    five = run_env(PYTHONHASHSEED="1", LD_PRELOAD="/x.so", LC_ALL="C", LANG="C", PYTHONDEBUG="1")
    assert cold_reason(ENGINE, ENGINE, five, WARM) == (
        "the run sets LANG, LC_ALL, LD_PRELOAD and 2 more, read at interpreter start"
    )


@FAST
@given(
    names=st.lists(
        st.from_regex(r"(PYTHON|LD_|LC_)[A-Z0-9_]{0,8}|LANG|LANGUAGE", fullmatch=True),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    values=st.lists(secret_values, min_size=6, max_size=6),
    warm_values=st.lists(st.one_of(st.none(), secret_values), min_size=6, max_size=6),
)
def test_reasons_name_variables_never_their_values(
    names: list[str], values: list[str], warm_values: list[str | None]
) -> None:
    env = dict(zip(names, values, strict=False))
    warm = {n: v for n, v in zip(names, warm_values, strict=False) if v is not None}
    differ = sorted(
        n for n in env.keys() | warm.keys() if n != "PYTHONPATH" and env.get(n) != warm.get(n)
    )
    why = cold_reason(ENGINE, ENGINE, env, warm)
    assert (why is None) == (not differ)
    if why is not None:
        assert SECRET not in why
        assert all(name in why for name in differ[:3])
        assert why.endswith(", read at interpreter start")


# -- packages_changed ----------------------------------------------------------------------


def test_unchanged_import_directories_change_nothing() -> None:
    stamps = {"/venv/site-packages": 10, "/usr/lib/python3.11": 20}
    assert packages_changed(stamps, dict(stamps)) is None
    assert packages_changed({}, {"/new": 1}) is None
    # A directory that appeared since (not on the warm process's path) is not its concern.
    assert packages_changed(stamps, {**stamps, "/new/dir": 5}) is None


def test_a_changed_or_vanished_import_directory_is_named() -> None:
    stamps = {"/b/site-packages": 10, "/a/lib": 20}
    assert packages_changed(stamps, {"/b/site-packages": 11, "/a/lib": 20}) == (
        "the flow interpreter's packages in /b/site-packages changed since it started"
    )
    assert packages_changed(stamps, {"/b/site-packages": 10, "/a/lib": None}) == (
        "the flow interpreter's packages in /a/lib changed since it started"
    )
    assert packages_changed(stamps, {"/b/site-packages": 10}) == (
        "the flow interpreter's packages in /a/lib changed since it started"
    )
    # Several changed: the first in sorted order, whatever the mapping's order.
    assert packages_changed(stamps, {"/b/site-packages": 1, "/a/lib": 2}) == (
        "the flow interpreter's packages in /a/lib changed since it started"
    )
