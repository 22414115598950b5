"""Where each setting comes from: flag > env > config file > default (backend config
above all), and what the user sees for every bad input. Runs the real command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli.main import cli
from agent.core.errors import ConfigError
from agent.settings import configfile

BASE_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_", "SUPERVISOR"))
}


@pytest.fixture(autouse=True)
def _keep_root_logger() -> Iterator[None]:
    """`start` configures the root logger; give the test process its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def settings(args: list[str], env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """`agent local start --print-config` -> {setting: (value, source)}."""
    result = CliRunner().invoke(
        cli,
        ["local", "start", "--print-config", *args],
        env={"PREFECT_API_URL": "http://127.0.0.1:9/api", **(env or {})},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        name, rest = line.split(None, 1)
        value, _, src = rest.rpartition("(")
        rows[name] = (value.strip(), src.rstrip(")"))
    return rows


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


# -- precedence --------------------------------------------------------------------------


def test_defaults_when_nothing_is_given(tmp_path: Path) -> None:
    rows = settings(["--pool", "p", "--spool", str(tmp_path)])
    assert rows["name"] == ("agent", "default")
    assert rows["log-level"] == ("INFO", "default")
    assert rows["cloud-logs"] == ("true", "default")
    assert rows["auth-string"] == ("(none)", "default")


def test_file_beats_default_env_beats_file_flag_beats_env(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        'pool = "file-pool"\nname = "file-name"\nlabels = ["f1"]\nlog-level = "debug"\n'
        f'spool = "{tmp_path}"\nhostname-label = false\nenv = {{ FILE_ONLY = "1" }}\n',
    )
    rows = settings(["--config", str(conf)])
    assert rows["pool"] == ("file-pool", "file")
    assert rows["name"] == ("file-name", "file")
    assert rows["labels"] == ("f1", "file")
    assert rows["log-level"] == ("DEBUG", "file")
    assert rows["env"] == ("FILE_ONLY=...", "file")

    env = {
        "PREFECT__CLOUD__AGENT__NAME": "env-name",
        "PREFECT__CLOUD__AGENT__LABELS": '["e1", "e2"]',
        "PREFECT__CLOUD__AGENT__ENV_VARS": '{"ENV_ONLY": "2"}',
        "AGENT_CONFIG": str(conf),
    }
    rows = settings([], env)
    assert rows["name"] == ("env-name", "env")
    assert rows["labels"] == ("e1, e2", "env")
    assert rows["env"] == ("ENV_ONLY=...", "env")
    assert rows["pool"] == ("file-pool", "file")

    rows = settings(["-n", "flag-name", "-l", "x", "-e", "FLAG=3"], env)
    assert rows["name"] == ("flag-name", "flag")
    assert rows["labels"] == ("x", "flag")
    assert rows["env"] == ("FLAG=...", "flag")


def test_prefect1_list_dict_and_comma_forms_are_all_accepted(tmp_path: Path) -> None:
    base = ["--pool", "p", "--spool", str(tmp_path), "--no-hostname-label"]
    for labels in ('["a","b"]', "['a', 'b']", "a,b", " a , b "):
        assert settings(base, {"PREFECT__CLOUD__AGENT__LABELS": labels})["labels"][0] == "a, b"
    for env_vars in ('{"K": "v", "L": "w"}', "{'K': 'v', 'L': 'w'}", "K=v,L=w"):
        rows = settings(base, {"PREFECT__CLOUD__AGENT__ENV_VARS": env_vars})
        assert rows["env"][0] == "K=..., L=..."


def test_auth_string_comes_from_env_then_file_never_printed(tmp_path: Path) -> None:
    conf = write(tmp_path, f'auth-string = "u:file-secret"\npool = "p"\nspool = "{tmp_path}"\n')
    rows = settings(["--config", str(conf)])
    assert rows["auth-string"] == ("(set)", "file")
    rows = settings(["--config", str(conf)], {"PREFECT_API_AUTH_STRING": "u:env"})
    assert rows["auth-string"] == ("(set)", "env")


def test_no_cloud_logs_from_flag_env_and_prefect1_switch(tmp_path: Path) -> None:
    base = ["--pool", "p", "--spool", str(tmp_path)]
    assert settings([*base, "--no-cloud-logs"])["cloud-logs"] == ("false", "flag")
    assert settings(base, {"AGENT_NO_CLOUD_LOGS": "1"})["cloud-logs"] == ("false", "env")
    off = {"PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "false"}
    assert settings(base, off)["cloud-logs"][0] == "false"
    on = {"PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "true"}
    assert settings(base, on)["cloud-logs"][0] == "true"


# -- what the user sees for bad input (the real entry point: exit code and stderr) --------


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={**BASE_ENV, "PREFECT_API_URL": "http://127.0.0.1:9/api", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lables = ["a"]', "unknown key 'lables' (did you mean 'labels'?)"),
        ("labels = 1", "key 'labels' must be a list of strings, not an integer"),
        ('show-flow-logs = "yes"', "key 'show-flow-logs' must be true or false, not a string"),
        ('log-level = "LOUD"', "key 'log-level' must be one of DEBUG, INFO, WARNING, ERROR"),
        ("env = { A = 1 }", "key 'env' must be a table"),
        ("pool = ", "is not valid TOML"),
    ],
)
def test_bad_config_file_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    conf = write(tmp_path, text + "\n")
    result = agent("local", "start", "--config", str(conf), "--pool", "p", "--spool", "/x")
    assert result.returncode == 78, result.stderr
    assert f"Error: config file {conf}" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = agent("worker", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 78
    assert f"Error: config file {tmp_path / 'nope.toml'} does not exist" in result.stderr


def test_wrong_type_never_echoes_a_secret(tmp_path: Path) -> None:
    conf = write(tmp_path, "key = 12345678\n")
    result = agent("worker", "--config", str(conf))
    assert result.returncode == 78
    assert "key 'key' must be a string, not an integer" in result.stderr
    assert "12345678" not in result.stderr


def test_malformed_labels_env_is_a_config_error() -> None:
    result = agent(
        "local", "start", "--pool", "p", "--spool", "/x",
        env={"PREFECT__CLOUD__AGENT__LABELS": '["a", 1]'},
    )  # fmt: skip
    assert result.returncode == 78
    assert "PREFECT__CLOUD__AGENT__LABELS" in result.stderr
    assert "is not a list of strings" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_env_vars_env_does_not_echo_values() -> None:
    result = agent(
        "local", "start", "--pool", "p", "--spool", "/x",
        env={"PREFECT__CLOUD__AGENT__ENV_VARS": '{"K": 42, "S": "topsecret"}'},
    )  # fmt: skip
    assert result.returncode == 78
    assert "PREFECT__CLOUD__AGENT__ENV_VARS: not a mapping of strings" in result.stderr
    assert "topsecret" not in result.stderr


def test_bad_prefect1_send_logs_switch() -> None:
    result = agent(
        "local", "start", "--pool", "p", "--spool", "/x",
        env={"PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "maybe"},
    )  # fmt: skip
    assert result.returncode == 78
    assert "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS: 'maybe' is not true or false" in result.stderr


@pytest.mark.parametrize("where", ["flag", "env"])
def test_unknown_log_level_is_a_usage_error(where: str) -> None:
    args = ["--log-level", "LOUD"] if where == "flag" else []
    env = {"AGENT_LOG_LEVEL": "LOUD"} if where == "env" else {}
    result = agent("worker", "--spool", "/x", *args, env=env)
    assert result.returncode == 2
    assert "Invalid value for '--log-level'" in result.stderr
    assert "'LOUD' is not one of" in result.stderr


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    base = ["--pool", "p", "--spool", str(tmp_path)]
    assert settings([*base, "--log-level", "warning"])["log-level"] == ("WARNING", "flag")


def test_loosely_readable_file_with_a_secret_warns(tmp_path: Path) -> None:
    conf = write(tmp_path, f'key = "k"\npool = "p"\nspool = "{tmp_path}"\n', mode=0o644)
    result = agent("local", "start", "--config", str(conf), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "readable by other users; chmod 600 it" in result.stderr
    conf.chmod(0o600)
    result = agent("local", "start", "--config", str(conf), "--print-config")
    assert "chmod 600" not in result.stderr


def test_every_option_names_its_env_var_in_help() -> None:
    for command in (["local", "start"], ["worker"], ["local", "install"], ["status"]):
        out = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200).output
        out = out[out.index("Options:") :]
        options = [line for line in out.splitlines() if line.strip().startswith("-")]
        for line in options:
            if "--help" in line or "--print-config" in line:
                continue
            start = out.index(line)
            nxt = out.find("\n  -", start + 1)
            block = out[start : nxt if nxt > 0 else None]
            assert "env var:" in block, f"{command}: {line.strip()} names no env var"


# -- the file checker (pure) -------------------------------------------------------------


def test_check_maps_keys_to_parameters() -> None:
    values = configfile.check(
        {"auth-string": "u:p", "import-paths": ["/a"], "max-polls": 3}, "f.toml"
    )
    assert values == {"auth_string": "u:p", "import_paths": ["/a"], "max_polls": 3}


@pytest.mark.parametrize(
    "data",
    [{"max-polls": True}, {"max-polls": 1.5}, {"env": {"A": 1}}, {"labels": ["a", 2]}],
)
def test_check_rejects_wrong_types(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="must be"):
        configfile.check(data, "f.toml")


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"env": {"A=B": "c"}}, "key 'env' has a name with '=' in it: 'A=B'"),
        ({"env": {"": "c"}}, "key 'env' has a name with nothing in it: ''"),
        ({"env": {"A": "x\x00SECRET"}}, "key 'env': the value of 'A' has a NUL byte in it"),
        ({"key": "pnu_\x00SECRET"}, "key 'key' has a NUL byte in it"),
        ({"import-paths": ["/ok", "/b\x00SECRET"]}, "key 'import-paths' has a NUL byte in it"),
    ],
)
def test_config_file_values_exec_would_refuse_stop_the_agent_naming_the_key(
    data: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigError) as info:
        configfile.check(data, "f.toml")
    assert str(info.value) == f"config file f.toml: {said}"
    assert "SECRET" not in str(info.value)
