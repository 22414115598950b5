"""Properties of the settings parsers (agent/settings/): whatever text or JSON an operator
puts in a flag, an environment variable, the config file or the backend variable, the
agent gets a value it can use or a ConfigError (exit 78) that never shows a secret."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.cli.main import _crash_loop_threshold, _stranded_after
from agent.core.errors import ConfigError
from agent.settings import backend_config, configfile
from agent.settings.config import (
    parse_agent_address,
    parse_api_url,
    parse_env_pairs,
    parse_env_vars_value,
    parse_labels_value,
    parse_pool_name,
)
from tests.unit.strategies import (
    FAST,
    SECRET,
    env_names,
    json_values,
    objects_with,
    secret_values,
    text,
)

SOURCE = "PREFECT__CLOUD__AGENT__ENV_VARS"
# A secret given where a value goes, whole or bare (without KEY=). Never with an '=' in
# it: what comes before an '=' is a name, and a bad name is shown (the operator must find
# it); "SeCrEt\0=x" names a variable "SeCrEt\0" as surely as "PATH\0=x" does.
bare_secrets = st.builds(lambda t: SECRET + t, text.filter(lambda t: "=" not in t))
url_parts = st.text(st.sampled_from("ab:/@[]%?# \n\x00.1-"), max_size=10)
urls = st.one_of(
    text,
    st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(["http", "https", "ftp"]), text),
    st.builds(
        lambda user, rest: f"http://{user}:{SECRET}@{rest}",
        st.from_regex(r"[a-z]{0,5}", fullmatch=True),
        url_parts,
    ),
)


def assert_exec_ok(env: dict[str, str]) -> None:
    for name, value in env.items():
        assert name and "=" not in name and "\0" not in name and "\0" not in value


# -- env-setting parsing (agent/settings/config.py) ---------------------------------------


@FAST
@given(st.lists(st.one_of(bare_secrets, st.builds("{}={}".format, env_names, secret_values))))
@example([SECRET + "-bare-value"])
@example(["=" + SECRET])
def test_env_pairs_give_a_usable_env_or_an_error_that_shows_no_value(pairs: list[str]) -> None:
    try:
        env = parse_env_pairs(pairs, SOURCE)
    except ConfigError as exc:
        assert SOURCE in str(exc) and SECRET not in str(exc)
    else:
        assert_exec_ok(env)


env_setting = st.one_of(
    text,
    st.lists(st.one_of(bare_secrets, st.builds("{}={}".format, env_names, secret_values))).map(
        ",".join
    ),
    st.dictionaries(env_names, st.one_of(secret_values, json_values())).map(json.dumps),
    json_values(bare_secrets, keys=env_names).map(json.dumps),
)


@FAST
@given(env_setting)
@example(SECRET)  # a bare value without KEY=
@example('{"A=B": "' + SECRET + '"}')
@example('{"K": "' + SECRET + '\\u0000"}')
@example("{" * 10_000)
def test_env_vars_setting_gives_a_usable_env_or_an_error_naming_the_variable_only(
    value: str,
) -> None:
    try:
        env = parse_env_vars_value(value, SOURCE)
    except ConfigError as exc:
        assert SOURCE in str(exc) and SECRET not in str(exc)
    else:
        assert_exec_ok(env)


@FAST
@given(st.one_of(text, json_values().map(json.dumps), st.lists(text).map(str)))
@example("[" * 10_000)
def test_labels_setting_gives_a_list_of_strings_or_a_config_error(value: str) -> None:
    try:
        labels = parse_labels_value(value, "PREFECT__CLOUD__AGENT__LABELS")
    except ConfigError as exc:
        assert "PREFECT__CLOUD__AGENT__LABELS" in str(exc)
    else:
        assert all(isinstance(x, str) and x == x.strip() and x for x in labels)


@FAST
@given(urls)
@example("http://[::1")
@example("http://u:" + SECRET + "@host:notaport/api")
@example("http://u:" + SECRET + "@host/api\n")
def test_api_url_gives_a_url_or_an_error_that_hides_its_password(value: str) -> None:
    try:
        url = parse_api_url(value)
    except ConfigError as exc:
        assert SECRET not in str(exc)
    else:
        assert url.startswith(("http://", "https://")) and url.isprintable()


@FAST
@given(urls)
@example("[")
@example("http://u:" + SECRET + "@host")
def test_agent_address_gives_host_and_port_or_a_config_error(value: str) -> None:
    try:
        host, port = parse_agent_address(value)
    except ConfigError as exc:
        assert SECRET not in str(exc)
    else:
        assert host and 0 <= port <= 65535


# Names made mostly of the characters Prefect's rule is about.
pool_names = st.text(st.sampled_from([*"ab -_/%&><'\"\n\t", "é", "\x00"]), max_size=6)


@FAST
@given(st.one_of(pool_names, text, st.none()))
@example("")
@example("' \"")
@example("a/b")
@example("50%")
@example("..")
def test_pool_name_is_accepted_only_when_prefect_accepts_it(name: str | None) -> None:
    names = pytest.importorskip("prefect.types.names")
    pydantic = pytest.importorskip("pydantic")
    try:
        pydantic.TypeAdapter(names.NonEmptyishName).validate_python(name or "")
        prefect_says_ok = True
    except pydantic.ValidationError:
        prefect_says_ok = False
    try:
        parse_pool_name(name)
    except ConfigError as exc:
        assert repr(name or "") in str(exc)  # the message names the pool
        # Stricter than Prefect only for control characters, which no pool name needs,
        # and for . and .., which no URL path can address.
        assert not prefect_says_ok or not (name or "").isprintable() or name in (".", "..")
    else:
        assert prefect_says_ok


@FAST
@given(st.one_of(st.none(), text, st.floats().map(str), st.integers().map(str)))
@example("nan")
@example("-0")
def test_hidden_number_settings_give_a_number_or_a_config_error(value: str | None) -> None:
    try:
        seconds = _stranded_after(value)
    except ConfigError:
        pass
    else:
        assert seconds >= 0 and not math.isnan(seconds)
    try:
        threshold = _crash_loop_threshold(value)
    except ConfigError:
        pass
    else:
        assert threshold >= 1


# -- the config file (agent/settings/configfile.py) ---------------------------------------

file_values = {
    "key": secret_values,
    "auth-string": secret_values,
    "env": st.dictionaries(env_names, secret_values, max_size=3),
    "labels": st.lists(text, max_size=3),
    "import-paths": st.lists(text, max_size=2),
    "max-polls": st.integers(),
    "log-level": st.sampled_from(["debug", "INFO", "loud"]),
    "pool": text,
}
config_tables = objects_with(list(configfile.KEYS), file_values)


@FAST
@given(config_tables)
@example({"env": {"A=B": SECRET}})
@example({"key": SECRET + "\0"})
def test_config_file_table_gives_settings_or_an_error_that_shows_no_secret(
    data: dict[str, Any],
) -> None:
    try:
        values = configfile.check(data, "agent.toml")
    except ConfigError as exc:
        assert str(exc).startswith("config file agent.toml: ")
        assert SECRET not in str(exc)
    else:
        assert set(values) <= {k.param for k in configfile.KEYS.values()}
        assert_exec_ok(values.get("env_pairs", {}))


def _toml(data: dict[str, Any]) -> str:
    """Enough of a TOML writer for the values generated here (JSON strings are TOML's)."""
    return "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in data.items())


@FAST
@given(st.one_of(st.binary(max_size=120), config_tables.map(lambda d: _toml(d).encode())))
@example(b"\xff\xfe")
@example(b"a = " + b"[" * 5_000)
def test_config_file_with_any_bytes_gives_settings_or_a_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.toml"
        path.write_bytes(data)
        try:
            configfile.load(path)
        except ConfigError as exc:
            assert str(path) in str(exc)
            assert SECRET not in str(exc)


# -- the backend config variable (agent/settings/backend_config.py) ----------------------

backend_values = objects_with(
    [k for k in backend_config._KINDS] + ["env-vars", "import-paths"],
    {
        "env_vars": st.dictionaries(env_names, secret_values, max_size=3),
        "import_paths": st.lists(text, max_size=2),
        "labels": st.lists(text, max_size=2),
    },
)


@FAST
@given(st.one_of(backend_values, backend_values.map(json.dumps), json_values()))
@example({"env_vars": {"A=B": SECRET}})
@example("[" * 10_000)
def test_backend_variable_of_any_shape_gives_settings_or_a_config_error(value: Any) -> None:
    try:
        settings = backend_config.parse(value, "agent-config")
    except ConfigError as exc:
        assert "agent config variable 'agent-config'" in str(exc)
        assert SECRET not in str(exc)
    else:
        assert_exec_ok(dict(settings.env_vars or {}))
