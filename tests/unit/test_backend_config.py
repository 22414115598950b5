"""Backend config: parsing the variable's value, applying it, describing changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.settings import backend_config
from agent.settings.backend_config import BackendSettings, apply, describe_changes, parse
from agent.settings.config import ApiSettings, PollerConfig, agent_labels


def base(**kw: object) -> PollerConfig:
    labels = ("flag",)
    fields: dict[str, object] = {
        "api": ApiSettings(url="http://x/api"),
        "pool": "p",
        "spool_dir": Path("/s"),
        "hostname": "host1",
        "label_list": labels,
        "hostname_label": True,
        "labels": agent_labels(labels, "host1", True),
        "env_vars": {"FLAG": "1"},
    }
    fields.update(kw)
    return PollerConfig(**fields)  # type: ignore[arg-type]


def test_parse_object_and_json_string_alike() -> None:
    value = {"labels": ["a"], "env_vars": {"K": "v"}, "show-flow-logs": True}
    expected = BackendSettings(labels=("a",), env_vars={"K": "v"}, show_flow_logs=True)
    assert parse(value, "cfg") == expected
    assert parse('{"labels": ["a"], "env_vars": {"K": "v"}, "show-flow-logs": true}', "cfg") == (
        expected
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "agent config variable 'cfg' does not hold valid JSON"),
        ('["a"]', "agent config variable 'cfg' must hold a JSON object, not list"),
        (42, "must hold a JSON object, not int"),
        ({"labels": "gpu"}, "agent config variable 'cfg': key 'labels' must be a list of strings"),
        ({"env_vars": {"K": 1}}, "key 'env_vars' must be an object of strings"),
        ({"name": ""}, "key 'name' must be a non-empty string"),
        ({"hostname_label": "no"}, "key 'hostname_label' must be true or false"),
        ({"lables": []}, "unknown key 'lables'"),
    ],
)
def test_parse_errors_name_variable_and_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(value, "cfg")
    assert message in str(info.value)


def test_env_var_values_never_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"env_vars": {"K": "secret-value", "L": 3}}, "cfg")
    assert "secret-value" not in str(info.value)


def test_apply_overrides_only_what_is_defined() -> None:
    config = apply(base(), BackendSettings(labels=("gpu",), work_queues=("q",)))
    assert config.labels == frozenset({"gpu", "host1"})
    assert config.work_queues == ("q",)
    assert config.env_vars == {"FLAG": "1"}  # not defined there: flags/env stay
    assert config.name == "agent"


def test_apply_hostname_label_off_drops_host() -> None:
    config = apply(base(), BackendSettings(hostname_label=False))
    assert config.labels == frozenset({"flag"})


def test_apply_is_from_base_not_cumulative() -> None:
    """A key removed from the variable falls back to flags/env, not to the last value."""
    first = apply(base(), BackendSettings(env_vars={"B": "2"}))
    assert first.env_vars == {"B": "2"}
    again = apply(base(), BackendSettings())
    assert again.env_vars == {"FLAG": "1"}


def test_describe_changes_names_keys_not_values() -> None:
    old = base(env_vars={"KEEP": "1", "GONE": "x", "EDIT": "old-secret"})
    new = apply(old, BackendSettings(env_vars={"KEEP": "1", "EDIT": "new-secret", "NEW": "y"}))
    new = apply(new, BackendSettings(labels=("gpu",)))
    lines = describe_changes(old, new)
    text = "\n".join(lines)
    assert "labels ['flag', 'host1'] -> ['gpu', 'host1']" in text
    assert "env vars: added NEW; removed GONE; changed EDIT" in text
    assert "secret" not in text
    assert describe_changes(old, old) == []


def test_defined_lists_set_keys() -> None:
    assert backend_config.defined(BackendSettings(labels=(), name="n")) == {"labels", "name"}


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"env_vars": {"A=B": "hunter2"}}, "key 'env_vars' has a name with '=' in it: 'A=B'"),
        ({"env-vars": {"K": "hunter2\0"}}, "key 'env-vars': the value of 'K' has a NUL byte"),
        ({"import_paths": ["/a\0"]}, "key 'import_paths' has a NUL byte in it"),
        ("[" * 10_000, "does not hold valid JSON"),
    ],
)
def test_backend_settings_exec_would_refuse_stop_the_agent_naming_the_key(
    value: object, said: str
) -> None:
    with pytest.raises(ConfigError) as info:
        backend_config.parse(value, "cfg")
    assert said in str(info.value) and "hunter2" not in str(info.value)
