"""agent/core/limits.py: per-run resource limits from job variables, and the host's
defaults and ceilings."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.errors import ConfigError, JobVariableError
from agent.core.jobvars import BASE_JOB_TEMPLATE, validate_job_variables
from agent.core.limits import (
    GIB,
    KIB,
    MAX_MEMORY,
    MIB,
    MIN_MEMORY,
    TIB,
    LimitPolicy,
    Limits,
    check_policy,
    format_bytes,
    parse_cpu,
    parse_limits,
    parse_memory,
    parse_pids,
    parse_timeout,
    resolve,
)
from tests.unit.strategies import FAST, json_values

MEM = "job variable `memory_limit`"
CPU = "job variable `cpu_limit`"
PIDS = "job variable `pids_limit`"
TIMEOUT = "job variable `timeout_seconds`"


def said(call: Any, value: object, name: str) -> str:
    with pytest.raises(JobVariableError) as info:
        call(value, name)
    return str(info.value)


# -- memory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512MiB", 512 * MIB),
        ("2GiB", 2 * GIB),
        ("128M", 128 * MIB),
        ("1G", GIB),
        ("8192KiB", 8 * MIB),
        ("8192k", 8 * MIB),
        ("1.5GiB", 3 * GIB // 2),
        ("1073741824", GIB),
        ("1073741824B", GIB),
        ("1tib", TIB),
        ("1T", TIB),
        ("1 GiB", GIB),
        ("  256 mib ", 256 * MIB),
        ("1gb", 10**9),
        ("5MB", 5 * 10**6),
        ("5000KB", 5 * 10**6),
        ("5000kb", 5 * 10**6),
        ("1TB", 10**12),
        (".5GiB", GIB // 2),
        ("0.1GB", 10**8),
        (8 * MIB, 8 * MIB),
        (float(GIB), GIB),
    ],
)
def test_memory_sizes(value: object, size: int) -> None:
    assert parse_memory(value, MEM) == size


def test_memory_fractions_round_down_to_whole_bytes() -> None:
    assert parse_memory("4.0000001MiB", MEM) == 4 * MIB  # and 0.4 bytes
    assert parse_memory("4100.5KiB", MEM) == 4100 * KIB + 512


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_memory_limit(value: object) -> None:
    assert parse_memory(value, MEM) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", f"{MEM} 'lots' is not a size such as 512MiB or 2GiB"),
        ("-1GiB", f"{MEM} '-1GiB' is not a size such as 512MiB or 2GiB"),
        ("2 GiBs", f"{MEM} '2 GiBs' is not a size such as 512MiB or 2GiB"),
        ("1e9", f"{MEM} '1e9' is not a size such as 512MiB or 2GiB"),
        ("inf", f"{MEM} 'inf' is not a size such as 512MiB or 2GiB"),
        ("nan", f"{MEM} 'nan' is not a size such as 512MiB or 2GiB"),
        (math.nan, f"{MEM} nan is not a size such as 512MiB or 2GiB"),
        (math.inf, f"{MEM} inf is not a size such as 512MiB or 2GiB"),
        (1.5, f"{MEM} 1.5 is not a size such as 512MiB or 2GiB"),
        ("9" * 100, f"{MEM} '{'9' * 36}... is not a size such as 512MiB or 2GiB"),
        (True, f"{MEM} must be a size such as 512MiB or 2GiB, got bool"),
        (["1GiB"], f"{MEM} must be a size such as 512MiB or 2GiB, got list"),
        ({"size": 1}, f"{MEM} must be a size such as 512MiB or 2GiB, got dict"),
        ("1MiB", f"{MEM} '1MiB' is below 4MiB, too little for Python to even start"),
        ("0", f"{MEM} '0' is below 4MiB, too little for Python to even start"),
        (-1, f"{MEM} -1 is below 4MiB, too little for Python to even start"),
        (4 * MIB - 1, f"{MEM} 4194303 is below 4MiB, too little for Python to even start"),
        ("1025TiB", f"{MEM} '1025TiB' is above 1024TiB, more than any host has"),
    ],
)
def test_memory_rejects_say_what_is_wrong(value: object, message: str) -> None:
    assert said(parse_memory, value, MEM) == message


def test_memory_of_more_digits_than_python_shows_is_still_a_clear_error() -> None:
    message = said(parse_memory, 10**5000, MEM)
    assert message == f"{MEM} a number too long to show is above 1024TiB, more than any host has"


def test_memory_bounds_are_inclusive() -> None:
    assert parse_memory("4MiB", MEM) == MIN_MEMORY
    assert parse_memory("1024TiB", MEM) == MAX_MEMORY


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (128 * MIB, "128MiB"),
        (2 * GIB, "2GiB"),
        (1536 * KIB, "1536KiB"),
        (3 * TIB, "3TiB"),
        (1024 * TIB, "1024TiB"),
        (1000, "1000B"),
        (10**6, "1000000B"),
        (0, "0B"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@FAST
@given(st.integers(min_value=MIN_MEMORY, max_value=MAX_MEMORY))
def test_format_bytes_parses_back(n: int) -> None:
    assert parse_memory(format_bytes(n), MEM) == n


@FAST
@given(json_values())
def test_any_json_is_a_size_or_an_error_naming_the_variable(value: Any) -> None:
    for parse in (parse_memory, parse_cpu, parse_pids, parse_timeout):
        try:
            parse(value, MEM)
        except JobVariableError as exc:
            assert str(exc).startswith(f"{MEM} "), str(exc)


# -- cpu, pids, timeout ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cores"),
    [(1, 1.0), (1.5, 1.5), ("0.5", 0.5), (" 2 ", 2.0), (0.01, 0.01), (None, None), ("", None)],
)
def test_cpu(value: object, cores: float | None) -> None:
    assert parse_cpu(value, CPU) == cores


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, f"{CPU} must be a number of cores such as 0.5 or 2, got bool"),
        ([1], f"{CPU} must be a number of cores such as 0.5 or 2, got list"),
        ("two", f"{CPU} 'two' is not a number of cores such as 0.5 or 2"),
        (math.nan, f"{CPU} nan is not a number of cores such as 0.5 or 2"),
        ("inf", f"{CPU} 'inf' is not a number of cores such as 0.5 or 2"),
        (math.inf, f"{CPU} inf is not a number of cores such as 0.5 or 2"),
        (0, f"{CPU} 0 is below 0.01 cores, the least cpu.max can give"),
        (-1, f"{CPU} -1 is below 0.01 cores, the least cpu.max can give"),
        ("0.001", f"{CPU} '0.001' is below 0.01 cores, the least cpu.max can give"),
        (1e6, f"{CPU} 1000000.0 is above 100000 cores, more than any host has"),
        (10**400, f"{CPU} {10**400!r:.37}... is not a number of cores such as 0.5 or 2"),
    ],
)
def test_cpu_rejects_say_what_is_wrong(value: object, message: str) -> None:
    assert said(parse_cpu, value, CPU) == message


@pytest.mark.parametrize(
    ("value", "pids"), [(8, 8), (64, 64), ("64", 64), (" 256 ", 256), (64.0, 64), ("", None)]
)
def test_pids(value: object, pids: int | None) -> None:
    assert parse_pids(value, PIDS) == pids


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (False, f"{PIDS} must be a whole number such as 64, got bool"),
        ("many", f"{PIDS} 'many' is not a whole number such as 64"),
        ("64.0", f"{PIDS} '64.0' is not a whole number such as 64"),
        ("-64", f"{PIDS} '-64' is not a whole number such as 64"),
        (64.5, f"{PIDS} 64.5 is not a whole number such as 64"),
        (math.nan, f"{PIDS} nan is not a whole number such as 64"),
        (7, f"{PIDS} 7 is below 8; it counts threads too, and Python needs a few"),
        (-1, f"{PIDS} -1 is below 8; it counts threads too, and Python needs a few"),
        (2**23, f"{PIDS} 8388608 is above 4194304, the most Linux allows"),
    ],
)
def test_pids_rejects_say_what_is_wrong(value: object, message: str) -> None:
    assert said(parse_pids, value, PIDS) == message


@pytest.mark.parametrize(
    ("value", "seconds"), [(3, 3.0), (0.5, 0.5), ("3600", 3600.0), (None, None), ("", None)]
)
def test_timeout(value: object, seconds: float | None) -> None:
    assert parse_timeout(value, TIMEOUT) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, f"{TIMEOUT} must be a number of seconds such as 3600, got bool"),
        ("1h", f"{TIMEOUT} '1h' is not a number of seconds such as 3600"),
        (math.inf, f"{TIMEOUT} inf is not a number of seconds such as 3600"),
        (math.nan, f"{TIMEOUT} nan is not a number of seconds such as 3600"),
        (0, f"{TIMEOUT} 0 must be more than 0 seconds"),
        (-5, f"{TIMEOUT} -5 must be more than 0 seconds"),
        (2e9, f"{TIMEOUT} 2000000000.0 is above 1000000000 seconds (31 years)"),
    ],
)
def test_timeout_rejects_say_what_is_wrong(value: object, message: str) -> None:
    assert said(parse_timeout, value, TIMEOUT) == message


# -- all four ----------------------------------------------------------------------------


def test_parse_limits_reads_the_four_job_variables() -> None:
    raw = {"memory_limit": "128MiB", "cpu_limit": 0.5, "pids_limit": 64, "timeout_seconds": 3}
    limits = parse_limits(raw)
    assert limits == Limits(memory=128 * MIB, cpu=0.5, pids=64, timeout=3.0)
    assert limits.describe() == (
        "memory_limit=128MiB, cpu_limit=0.5, pids_limit=64, timeout_seconds=3"
    )
    assert limits.any_cgroup()


def test_parse_limits_of_nothing_is_no_limit() -> None:
    assert parse_limits({}) == Limits()
    assert Limits().describe() == ""
    assert not Limits().any_cgroup()
    assert not Limits(timeout=3).any_cgroup()  # a timer, not a cgroup
    assert Limits(pids=64).any_cgroup()


def test_parse_limits_names_the_variable_with_the_prefix() -> None:
    with pytest.raises(JobVariableError) as info:
        parse_limits({"cpu_limit": "x"}, prefix="flag")
    assert str(info.value) == "flag `cpu_limit` 'x' is not a number of cores such as 0.5 or 2"


def test_describe_parses_back() -> None:
    limits = Limits(memory=6148 * KIB, cpu=2.0, pids=100, timeout=0.25)
    assert limits.describe() == (
        "memory_limit=6148KiB, cpu_limit=2, pids_limit=100, timeout_seconds=0.25"
    )
    raw = dict(pair.split("=") for pair in limits.describe().split(", "))
    assert parse_limits(raw) == limits


# -- defaults and ceilings -----------------------------------------------------------------


def test_resolve_without_policy_is_what_the_run_asked() -> None:
    asked = Limits(memory=GIB, timeout=3.0)
    assert resolve(asked, LimitPolicy()) == asked
    assert resolve(Limits(), LimitPolicy()) == Limits()


def test_resolve_fills_unset_limits_from_the_defaults() -> None:
    policy = LimitPolicy(defaults=Limits(memory=GIB, cpu=1.0, pids=128, timeout=60.0))
    asked = Limits(memory=2 * GIB, timeout=5.0)
    assert resolve(asked, policy) == Limits(memory=2 * GIB, cpu=1.0, pids=128, timeout=5.0)


def test_resolve_a_run_that_asks_nothing_gets_the_ceiling() -> None:
    ceilings = Limits(memory=2 * GIB, cpu=2.0, pids=512, timeout=3600.0)
    assert resolve(Limits(), LimitPolicy(ceilings=ceilings)) == ceilings
    policy = LimitPolicy(defaults=Limits(memory=GIB), ceilings=ceilings)
    assert resolve(Limits(), policy).memory == GIB  # the default before the ceiling


def test_resolve_at_the_ceiling_is_allowed() -> None:
    ceilings = Limits(memory=2 * GIB, cpu=2.0, pids=512, timeout=3600.0)
    assert resolve(ceilings, LimitPolicy(ceilings=ceilings)) == ceilings


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (
            Limits(memory=4 * GIB),
            "memory_limit=4GiB is above this host's ceiling --max-memory-limit=2GiB",
        ),
        (Limits(cpu=3.0), "cpu_limit=3 is above this host's ceiling --max-cpu-limit=2"),
        (Limits(cpu=2.5), "cpu_limit=2.5 is above this host's ceiling --max-cpu-limit=2"),
        (Limits(pids=513), "pids_limit=513 is above this host's ceiling --max-pids-limit=512"),
        (
            Limits(timeout=3600.5),
            "timeout_seconds=3600.5 is above this host's ceiling --max-timeout-seconds=3600",
        ),
    ],
)
def test_resolve_above_a_ceiling_names_both_numbers_and_the_flag(
    asked: Limits, message: str
) -> None:
    policy = LimitPolicy(ceilings=Limits(memory=2 * GIB, cpu=2.0, pids=512, timeout=3600.0))
    with pytest.raises(JobVariableError) as info:
        resolve(asked, policy)
    assert str(info.value) == message


def test_check_policy_refuses_a_default_above_its_ceiling() -> None:
    check_policy(LimitPolicy())
    check_policy(LimitPolicy(defaults=Limits(memory=GIB), ceilings=Limits(memory=GIB)))
    check_policy(LimitPolicy(defaults=Limits(memory=GIB), ceilings=Limits(cpu=1.0)))
    with pytest.raises(ConfigError) as info:
        check_policy(LimitPolicy(defaults=Limits(memory=4 * GIB), ceilings=Limits(memory=2 * GIB)))
    assert str(info.value) == "--default-memory-limit=4GiB is above --max-memory-limit=2GiB"
    with pytest.raises(ConfigError) as info:
        check_policy(LimitPolicy(defaults=Limits(timeout=90.0), ceilings=Limits(timeout=60.0)))
    assert str(info.value) == "--default-timeout-seconds=90 is above --max-timeout-seconds=60"


# -- job variables -----------------------------------------------------------------------


def test_job_variables_carry_the_limits() -> None:
    assert validate_job_variables({"memory_limit": "128MiB"}).limits.memory == 128 * MIB
    assert validate_job_variables({}).limits == Limits()


def test_a_bad_limit_fails_the_run_naming_the_variable() -> None:
    with pytest.raises(JobVariableError) as info:
        validate_job_variables({"memory_limit": "lots"})
    assert str(info.value) == f"{MEM} 'lots' is not a size such as 512MiB or 2GiB"


def test_the_template_offers_the_four_limits_as_form_fields() -> None:
    properties = BASE_JOB_TEMPLATE["variables"]["properties"]
    for name in ("memory_limit", "cpu_limit", "pids_limit", "timeout_seconds"):
        assert properties[name]["title"] and properties[name]["description"]
        assert properties[name]["default"] is None
        assert BASE_JOB_TEMPLATE["job_configuration"][name] == "{{ " + name + " }}"
    assert "512MiB" in properties["memory_limit"]["description"]
    text = json.dumps(BASE_JOB_TEMPLATE["job_configuration"])
    placeholders = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text))
    assert placeholders <= set(properties)
