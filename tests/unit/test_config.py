"""agent/settings/config.py: pure parsing of flags and environment values."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.settings.config import (
    ApiSettings,
    PollerConfig,
    agent_labels,
    parse_agent_address,
    parse_api_url,
    parse_env_pairs,
    parse_env_vars_value,
    parse_labels_value,
)

SOURCE = "PREFECT__CLOUD__AGENT__TEST"

# -- parse_agent_address ---------------------------------------------------------------


def test_agent_address_without_port_is_refused_with_must_specify_port() -> None:
    with pytest.raises(ConfigError, match="Must specify port"):
        parse_agent_address("http://127.0.0.1")


def test_agent_address_with_port_gives_host_and_int_port() -> None:
    assert parse_agent_address("http://127.0.0.1:8080") == ("127.0.0.1", 8080)


def test_agent_address_without_scheme_is_read_as_http() -> None:
    assert parse_agent_address("localhost:9000") == ("localhost", 9000)


@pytest.mark.parametrize("value", ["https://127.0.0.1:8080", "ftp://127.0.0.1:8080"])
def test_agent_address_with_other_scheme_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        parse_agent_address(value)


def test_agent_address_without_host_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse_agent_address("http://:8080")


@pytest.mark.parametrize("value", ["http://127.0.0.1:notaport", "http://127.0.0.1:70000"])
def test_agent_address_with_bad_port_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="invalid port"):
        parse_agent_address(value)


# -- parse_env_pairs -------------------------------------------------------------------


def test_env_pair_without_equals_names_the_expected_form_but_not_the_value() -> None:
    # A bare value is most often a secret pasted without its KEY=.
    with pytest.raises(ConfigError, match="KEY=VALUE") as info:
        parse_env_pairs(["s3cretvalue"])
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match=r"--env \(value 2 of 3\): expected KEY=VALUE"):
        parse_env_pairs(["A=1", "s3cretvalue", "B=2"])


def test_env_pair_splits_on_first_equals_only() -> None:
    assert parse_env_pairs(["A=b=c"]) == {"A": "b=c"}


def test_env_pair_empty_value_is_allowed() -> None:
    assert parse_env_pairs(["EMPTY="]) == {"EMPTY": ""}


def test_env_pairs_later_duplicate_wins_and_key_is_stripped() -> None:
    assert parse_env_pairs([" A =1", "A=2", "B=3"]) == {"A": "2", "B": "3"}


@pytest.mark.parametrize("pair", ["=secretvalue", "  =secretvalue"])
def test_env_pair_without_key_does_not_echo_the_value(pair: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE") as info:
        parse_env_pairs(["OK=1", pair])
    assert "secretvalue" not in str(info.value)


def test_env_pair_error_names_its_source() -> None:
    with pytest.raises(ConfigError, match=SOURCE):
        parse_env_pairs(["NOPE"], SOURCE)


# -- parse_labels_value ----------------------------------------------------------------


def test_labels_json_list() -> None:
    assert parse_labels_value('["a", "b"]', SOURCE) == ["a", "b"]


def test_labels_python_literal_list_with_single_quotes() -> None:
    assert parse_labels_value("['a', 'b']", SOURCE) == ["a", "b"]


def test_labels_comma_list_with_spaces_is_stripped() -> None:
    assert parse_labels_value(" a , b ,, c ", SOURCE) == ["a", "b", "c"]


def test_labels_empty_string_is_no_labels() -> None:
    assert parse_labels_value("", SOURCE) == []
    assert parse_labels_value("   ", SOURCE) == []


def test_labels_list_of_numbers_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a list of strings"):
        parse_labels_value("[1,2]", SOURCE)


def test_labels_unclosed_list_is_refused() -> None:
    with pytest.raises(ConfigError, match=SOURCE):
        parse_labels_value("[unclosed", SOURCE)


def test_labels_list_with_unhashable_literal_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_labels_value("[{[1]: 2}]", SOURCE)


def test_labels_deeply_nested_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_labels_value("[" * 100_000, SOURCE)


# -- parse_env_vars_value --------------------------------------------------------------


def test_env_vars_json_dict() -> None:
    assert parse_env_vars_value('{"A": "1", "B": "x y"}', SOURCE) == {"A": "1", "B": "x y"}


def test_env_vars_python_dict_literal() -> None:
    assert parse_env_vars_value("{'A': '1'}", SOURCE) == {"A": "1"}


def test_env_vars_comma_list() -> None:
    assert parse_env_vars_value("A=1,B=2", SOURCE) == {"A": "1", "B": "2"}


def test_env_vars_empty_string_is_empty_dict() -> None:
    assert parse_env_vars_value("  ", SOURCE) == {}


def test_env_vars_non_string_values_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match=SOURCE) as info:
        parse_env_vars_value('{"TOKEN": "hunter2secret", "N": 12345}', SOURCE)
    assert "hunter2secret" not in str(info.value)
    assert "12345" not in str(info.value)


def test_env_vars_unparsable_dict_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_env_vars_value('{"TOKEN": "hunter2secret",', SOURCE)
    assert "hunter2secret" not in str(info.value)


def test_env_vars_comma_inside_a_value_stays_in_that_value() -> None:
    # Before, the fragment after the comma was echoed in an error: a secret leak.
    assert parse_env_vars_value("TOKEN=first-part,second-part-of-secret,B=2", SOURCE) == {
        "TOKEN": "first-part,second-part-of-secret",
        "B": "2",
    }


def test_env_vars_first_piece_without_equals_is_an_error_that_hides_it() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_env_vars_value("=x,secret-fragment", SOURCE)


def test_env_vars_dict_with_unhashable_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_env_vars_value('{[1]: "x"}', SOURCE)


# -- parse_api_url ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_api_url_missing_says_how_to_set_it(value: str | None) -> None:
    with pytest.raises(ConfigError, match="PREFECT_API_URL"):
        parse_api_url(value)


@pytest.mark.parametrize("value", ["ftp://host/api", "localhost:4200/api", "http://"])
def test_api_url_without_http_scheme_or_host_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="http://HOST:PORT/api"):
        parse_api_url(value)


def test_api_url_trailing_slash_is_dropped() -> None:
    assert parse_api_url("https://api.example.com/api/") == "https://api.example.com/api"


# -- agent_labels ----------------------------------------------------------------------


def test_agent_labels_with_hostname_label_adds_hostname() -> None:
    assert agent_labels(["a", "b"], "host1", True) == frozenset({"a", "b", "host1"})


def test_agent_labels_without_hostname_label_omits_hostname() -> None:
    assert agent_labels(["a"], "host1", False) == frozenset({"a"})


# -- ApiSettings / PollerConfig --------------------------------------------------------


def test_secret_env_from_key() -> None:
    settings = ApiSettings(url="http://x/api", key="pnu_key")
    assert settings.secret_env() == {"PREFECT_API_KEY": "pnu_key"}


def test_secret_env_from_auth_string() -> None:
    settings = ApiSettings(url="http://x/api", auth_string="user:pass")
    assert settings.secret_env() == {"PREFECT_API_AUTH_STRING": "user:pass"}


def test_secret_env_without_credential_is_empty() -> None:
    assert ApiSettings(url="http://x/api").secret_env() == {}


def test_api_settings_repr_hides_key_and_auth_string() -> None:
    text = repr(ApiSettings(url="http://x/api", key="pnu_topsecret", auth_string="u:pw-secret"))
    assert "http://x/api" in text
    assert "pnu_topsecret" not in text
    assert "pw-secret" not in text


def test_poller_config_repr_hides_env_values_and_key() -> None:
    config = PollerConfig(
        api=ApiSettings(url="http://x/api", key="pnu_topsecret"),
        pool="pool1",
        spool_dir=Path("/var/spool/agent"),
        env_vars={"AWS_SECRET": "hunter2-env-value"},
    )
    text = repr(config)
    assert "pool1" in text
    assert "hunter2-env-value" not in text
    assert "pnu_topsecret" not in text


def test_a_logged_config_shows_no_password_key_or_auth_string() -> None:
    api = ApiSettings(url="http://u:hunter2@h/api", key="pnu_hunter3", auth_string="u:hunter4")
    config = PollerConfig(api=api, pool="p", spool_dir=Path("/s"), env_vars={"K": "hunter5"})
    shown = repr(config)
    assert "http://u:***@h/api" in shown
    assert "hunter" not in shown
