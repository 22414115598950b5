"""agent/cli/containment_options.py and the `agent worker` flags it adds: the host's
defaults and ceilings for runs' limits become a checked ContainmentConfig, and a bad value
(flag, environment variable or config file key) stops the worker with the setting named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.cli.containment_options import CONTAINMENT_PARAMS, containment_config
from agent.core.errors import RET_CONFIG, ConfigError
from agent.core.limits import GIB, MIB, LimitPolicy, Limits
from agent.settings import configfile, defaults
from agent.settings.config import ContainmentConfig
from tests.unit.test_cli_hardening import agent


def params(**given: Any) -> dict[str, Any]:
    """What click hands the command: every containment parameter, None when not given."""
    p: dict[str, Any] = dict.fromkeys(CONTAINMENT_PARAMS)
    p.update(containment=defaults.CONTAINMENT, crash_tail_lines=defaults.CRASH_TAIL_LINES)
    p.update(given)
    return p


# -- containment_config --------------------------------------------------------------------


def test_no_containment_flags_give_strict_mode_and_no_limits() -> None:
    assert containment_config(params()) == ContainmentConfig(
        mode="strict", cgroup_root=None, policy=LimitPolicy(), crash_tail_lines=50
    )


def test_every_containment_flag_lands_in_the_config_as_numbers() -> None:
    config = containment_config(
        params(
            containment="best-effort",
            cgroup_root=Path("/sys/fs/cgroup/agent"),
            crash_tail_lines=7,
            default_memory_limit="512MiB",
            max_memory_limit="2GiB",
            default_cpu_limit="0.5",
            max_cpu_limit="2",
            default_pids_limit="64",
            max_pids_limit="1024",
            default_timeout_seconds="3600",
            max_timeout_seconds="86400",
        )
    )
    assert config == ContainmentConfig(
        mode="best-effort",
        cgroup_root=Path("/sys/fs/cgroup/agent"),
        policy=LimitPolicy(
            defaults=Limits(memory=536870912, cpu=0.5, pids=64, timeout=3600.0),
            ceilings=Limits(memory=2 * GIB, cpu=2.0, pids=1024, timeout=86400.0),
        ),
        crash_tail_lines=7,
    )


def test_the_containment_mode_is_read_whatever_its_case() -> None:
    # The config file accepts STRICT, as it does log levels; so must the flag's parser.
    assert containment_config({"containment": "Best-Effort"}).mode == "best-effort"
    assert configfile.check({"containment": "STRICT"}, "f") == {"containment": "STRICT"}


def test_a_ceiling_alone_or_a_default_alone_is_accepted() -> None:
    config = containment_config(params(max_memory_limit="1GiB", default_cpu_limit="1.5"))
    assert config.policy == LimitPolicy(
        defaults=Limits(cpu=1.5), ceilings=Limits(memory=1024 * MIB)
    )


def test_a_default_equal_to_its_ceiling_is_accepted() -> None:
    config = containment_config(params(default_pids_limit="100", max_pids_limit="100"))
    assert config.policy == LimitPolicy(defaults=Limits(pids=100), ceilings=Limits(pids=100))


@pytest.mark.parametrize(
    ("param", "value", "said"),
    [
        ("max_memory_limit", "lots", "--max-memory-limit 'lots' is not a size such as 512MiB"),
        ("default_memory_limit", "1MiB", "--default-memory-limit '1MiB' is below 4MiB"),
        ("max_cpu_limit", "abc", "--max-cpu-limit 'abc' is not a number of cores"),
        ("default_cpu_limit", "0.001", "--default-cpu-limit '0.001' is below 0.01 cores"),
        ("max_pids_limit", "4", "--max-pids-limit '4' is below 8"),
        ("default_pids_limit", "1.5", "--default-pids-limit '1.5' is not a whole number"),
        ("max_timeout_seconds", "0", "--max-timeout-seconds '0' must be more than 0 seconds"),
        ("default_timeout_seconds", "soon", "--default-timeout-seconds 'soon' is not a number"),
    ],
)
def test_a_bad_limit_value_is_refused_naming_the_flag_not_the_job_variable(
    param: str, value: str, said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        containment_config(params(**{param: value}))
    message = str(refused.value)
    assert message.startswith(said)
    assert "setting `" not in message
    assert "job variable" not in message


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            {"default_memory_limit": "4GiB", "max_memory_limit": "2GiB"},
            "--default-memory-limit=4GiB is above --max-memory-limit=2GiB",
        ),
        (
            {"default_cpu_limit": "2", "max_cpu_limit": "1"},
            "--default-cpu-limit=2 is above --max-cpu-limit=1",
        ),
        (
            {"default_pids_limit": "512", "max_pids_limit": "256"},
            "--default-pids-limit=512 is above --max-pids-limit=256",
        ),
        (
            {"default_timeout_seconds": "7200", "max_timeout_seconds": "3600"},
            "--default-timeout-seconds=7200 is above --max-timeout-seconds=3600",
        ),
    ],
)
def test_a_default_above_its_ceiling_is_refused_naming_both_flags(
    given: dict[str, str], said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        containment_config(params(**given))
    assert str(refused.value) == said


# -- `agent worker` from the real command line ---------------------------------------------


def test_worker_with_a_bad_ceiling_flag_exits_78_with_one_line_naming_the_flag(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    result = agent("worker", "--spool", str(spool), "--max-cpu-limit", "abc")
    assert result.returncode == RET_CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        "Error: --max-cpu-limit 'abc' is not a number of cores such as 0.5 or 2"
    ]
    assert result.stdout == ""
    assert not spool.exists()  # refused before the worker touched anything


def test_worker_with_a_default_above_its_ceiling_exits_78_naming_both_flags(
    tmp_path: Path,
) -> None:
    result = agent(
        "worker", "--spool", str(tmp_path / "spool"),
        "--default-memory-limit", "4GiB", "--max-memory-limit", "2GiB",
    )  # fmt: skip
    assert result.returncode == RET_CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        "Error: --default-memory-limit=4GiB is above --max-memory-limit=2GiB"
    ]


def test_a_bad_ceiling_from_the_environment_is_refused_as_the_flag_is(tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    from_env = agent("worker", "--spool", spool, env={"AGENT_MAX_MEMORY_LIMIT": "lots"})
    from_flag = agent("worker", "--spool", spool, "--max-memory-limit", "lots")
    assert from_env.returncode == from_flag.returncode == RET_CONFIG
    assert from_env.stderr == from_flag.stderr
    assert from_env.stderr.splitlines() == [
        "Error: --max-memory-limit 'lots' is not a size such as 512MiB or 2GiB"
    ]


def test_a_default_above_its_ceiling_in_the_config_file_stops_the_worker(
    tmp_path: Path,
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('default-memory-limit = "4GiB"\nmax-memory-limit = "2GiB"\n')
    result = agent("worker", "--config", str(config), "--spool", str(tmp_path / "spool"))
    assert result.returncode == RET_CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        "Error: --default-memory-limit=4GiB is above --max-memory-limit=2GiB"
    ]


def test_worker_help_lists_the_containment_flags_and_their_variables() -> None:
    result = agent("worker", "--help")
    assert result.returncode == 0, result.stderr
    # click wraps help text: compare it with the wrapping undone.
    shown = " ".join(result.stdout.split())
    for flag in (
        "--containment [strict|best-effort|off]",
        "--cgroup-root PATH",
        "--crash-tail-lines INTEGER RANGE",
        "--default-memory-limit TEXT",
        "--max-memory-limit TEXT",
        "--default-cpu-limit",
        "--max-cpu-limit",
        "--default-pids-limit",
        "--max-pids-limit",
        "--default-timeout-seconds",
        "--max-timeout-seconds",
    ):
        assert flag in shown
    for variable in (
        "AGENT_CONTAINMENT",
        "AGENT_CGROUP_ROOT",
        "AGENT_CRASH_TAIL_LINES",
        "AGENT_DEFAULT_MEMORY_LIMIT",
        "AGENT_MAX_MEMORY_LIMIT",
        "AGENT_MAX_PIDS_LIMIT",
    ):
        assert f"env var: {variable}" in shown


# -- the TOML config file --------------------------------------------------------------------


def test_the_config_file_takes_every_containment_key_as_its_flags_parameter() -> None:
    data: dict[str, Any] = {
        "containment": "best-effort",
        "cgroup-root": "/sys/fs/cgroup/agent",
        "crash-tail-lines": 20,
        "default-memory-limit": "512MiB",
        "max-memory-limit": "2GiB",
        "default-cpu-limit": 0.5,
        "max-cpu-limit": "2",
        "default-pids-limit": 64,
        "max-pids-limit": 256,
        "default-timeout-seconds": 3600,
        "max-timeout-seconds": 86400.0,
    }
    values = configfile.check(data, "f")
    assert values == {
        "containment": "best-effort",
        "cgroup_root": "/sys/fs/cgroup/agent",
        "crash_tail_lines": 20,
        "default_memory_limit": "512MiB",
        "max_memory_limit": "2GiB",
        "default_cpu_limit": 0.5,
        "max_cpu_limit": "2",
        "default_pids_limit": 64,
        "max_pids_limit": 256,
        "default_timeout_seconds": 3600,
        "max_timeout_seconds": 86400.0,
    }
    assert set(values) == set(CONTAINMENT_PARAMS)  # every flag has its key


def test_a_memory_ceiling_in_the_config_file_feeds_max_memory_limit() -> None:
    assert configfile.check({"max-memory-limit": "2GiB"}, "f") == {"max_memory_limit": "2GiB"}


def test_numbers_from_the_config_file_build_the_same_policy_as_flags_do() -> None:
    values = configfile.check({"max-pids-limit": 256, "default-cpu-limit": 0.5}, "f")
    assert containment_config(params(**values)).policy == LimitPolicy(
        defaults=Limits(cpu=0.5), ceilings=Limits(pids=256)
    )


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (
            {"containment": "sometimes"},
            "config file f: key 'containment' must be strict, best-effort or off",
        ),
        (
            {"crash-tail-lines": "20"},
            "config file f: key 'crash-tail-lines' must be a whole number",
        ),
        ({"crash-tail-lines": -1}, "config file f: key 'crash-tail-lines' must be a whole number"),
        ({"cgroup-root": 3}, "config file f: key 'cgroup-root' must be a string (path)"),
        (
            {"max-memory-limit": True},
            "config file f: key 'max-memory-limit' must be a number or a string such as 2GiB",
        ),
        (
            {"default-pids-limit": [64]},
            "config file f: key 'default-pids-limit' must be a number or a string such as 2GiB",
        ),
        ({"max-memory-limits": "2GiB"}, "did you mean 'max-memory-limit'?"),
    ],
)
def test_a_bad_containment_key_in_the_config_file_is_refused_naming_the_key(
    data: dict[str, Any], said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        configfile.check(data, "f")
    assert said in str(refused.value)
