"""What the user sees from the real command line for a bad pool name, a password in the
API URL and a malformed env setting: exit 78 naming the culprit, and no secret printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.status import collect
from agent.cli.status_table import render_table
from agent.core.errors import RET_CONFIG
from agent.spool.locks import write_poller_state
from agent.spool.moves import Spool

BASE_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_", "SUPERVISOR"))
}
PASSWORD = "hunter2-in-url"
API = f"http://operator:{PASSWORD}@127.0.0.1:9/api"


def agent(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed command, as supervisord runs it."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={**BASE_ENV, "PREFECT_API_URL": "http://127.0.0.1:9/api", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- the pool name -----------------------------------------------------------------------


def test_start_with_an_empty_pool_exits_78_and_says_the_pool_name_is_empty(
    tmp_path: Path,
) -> None:
    spool = str(tmp_path / "spool")
    result = agent("local", "start", "--pool", "", "--spool", spool, timeout=30)
    assert result.returncode == RET_CONFIG, result.stderr
    assert result.stderr.strip() == (
        "Error: work pool name '' (--pool) is empty: give the pool's name"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("pool", "said"),
    [
        ("team/a", "work pool name 'team/a' (--pool) has / in it"),
        ("50%", "work pool name '50%' (--pool) has % in it"),
        ("<a&b>", "work pool name '<a&b>' (--pool) has & < > in it"),
        ("' '", "work pool name \"' '\" (--pool) is empty"),
        ("pool\n", "work pool name 'pool\\n' (--pool) has control characters"),
    ],
)
def test_start_with_a_pool_name_prefect_refuses_exits_78_naming_it(
    tmp_path: Path, pool: str, said: str
) -> None:
    # A pool that got through would start a poller: with a timeout the test fails
    # instead of hanging.
    result = agent("local", "start", "--pool", pool, "--spool", str(tmp_path), timeout=30)
    assert result.returncode == RET_CONFIG
    assert said in result.stderr


def test_a_bad_pool_from_the_environment_is_named_with_its_variable(tmp_path: Path) -> None:
    result = agent("local", "start", "--spool", str(tmp_path), env={"AGENT_POOL": "a/b"})
    assert result.returncode == RET_CONFIG
    assert "work pool name 'a/b' (AGENT_POOL) has / in it" in result.stderr


def test_install_refuses_a_pool_name_start_would_refuse(tmp_path: Path) -> None:
    result = agent(
        "local", "install", "--pool", "a/b", "--spool", str(tmp_path), "--run-dir", str(tmp_path)
    )
    assert result.returncode == RET_CONFIG
    assert "work pool name 'a/b' (--pool) has / in it" in result.stderr
    assert result.stdout == ""


# -- a password in the API URL -------------------------------------------------------------


def test_print_config_shows_the_api_url_with_its_password_as_stars(tmp_path: Path) -> None:
    result = agent("local", "start", "--print-config", "--pool", "p", "--spool", str(tmp_path),
                   env={"PREFECT_API_URL": API})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "http://operator:***@127.0.0.1:9/api" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_a_malformed_api_url_is_refused_without_showing_its_password(tmp_path: Path) -> None:
    bad = f"http://operator:{PASSWORD}@[::1/api"
    result = agent("local", "start", "--pool", "p", "--spool", str(tmp_path), "--api", bad)
    assert result.returncode == RET_CONFIG
    assert "http://operator:***@[::1/api" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_install_keeps_a_password_in_the_api_url_out_of_the_configuration(
    tmp_path: Path,
) -> None:
    args = ["local", "install", "--pool", "p", "--spool", str(tmp_path), "--run-dir", str(tmp_path)]
    result = agent(*args, env={"PREFECT_API_URL": API})
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "--api" not in result.stdout  # nor in `ps` of the programs
    assert "PREFECT_API_URL" in result.stderr and 'api = "..."' in result.stderr
    # Without a password the URL is written as before.
    plain = agent(*args, env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert "--api http://127.0.0.1:9/api" in plain.stdout
    assert "PREFECT_API_URL" not in plain.stderr


def test_status_never_shows_a_password_the_pollers_last_error_quotes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    error = f"read_work_pool: {API} does not look like a Prefect API: got text/html"
    write_poller_state(spool.root, {"pid": 1, "last_error": error})
    snapshot = collect(spool.root)
    shown = snapshot["poller"]["last_error"]
    assert shown == "read_work_pool: http://operator:***@127.0.0.1:9/api does not look like " + (
        "a Prefect API: got text/html"
    )
    assert PASSWORD not in render_table(snapshot)
    result = agent("status", "--json", "--spool", str(spool.root))
    assert "operator:***@" in result.stdout and PASSWORD not in result.stdout


# -- a malformed env setting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("hunter2-bare-secret", "expected KEY=VALUE, found no '=' in it"),
        ('{"A=B": "hunter2-bare-secret"}', "has a name with '=' in it: 'A=B'"),
        ('{"K": "hunter2-bare-secret\\u0000"}', "the value of 'K' has a NUL byte in it"),
    ],
)
def test_a_malformed_env_vars_setting_exits_78_naming_the_variable_not_the_value(
    tmp_path: Path, value: str, said: str
) -> None:
    result = agent(
        "local", "start", "--pool", "p", "--spool", str(tmp_path),
        env={"PREFECT__CLOUD__AGENT__ENV_VARS": value},
    )  # fmt: skip
    assert result.returncode == RET_CONFIG, result.stderr
    assert "PREFECT__CLOUD__AGENT__ENV_VARS" in result.stderr and said in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
