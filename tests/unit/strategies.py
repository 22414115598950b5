"""Hypothesis strategies and settings shared by the property tests (test_properties_*).

Outside data is any JSON value, and its strings carry what exec refuses or mangles:
NUL, '=', lone surrogates (JSON's "\\ud800" decodes to one), line breaks, quotes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded so that every property module runs in a few seconds; no example database in
# the repository.
FAST = settings(
    max_examples=150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,  # a busy CI host must not fail a pure function on time
)
# Each example forks and execs /bin/true.
EXEC = settings(FAST, max_examples=100)

# A marker that only ever appears in generated *values*: an error message must not show it.
SECRET = "SeCrEt"

_HOSTILE = st.sampled_from(
    ["=", "\0", "\n", "\r", "\t", " ", "'", '"', "\\", "$", "\x1b", "\x85", "\u2028", "é"]
)
_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())

# Mostly ordinary, sometimes hostile characters.
chars = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), st.characters(), _HOSTILE, _SURROGATE
)
text = st.text(chars, max_size=12)
env_names = st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), text)
secret_values = st.builds(lambda t: SECRET + t, text)


def json_values(
    strings: st.SearchStrategy[str] = text, keys: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[Any]:
    """Any JSON value (what json.loads can give, NaN and lone surrogates included);
    objects' keys drawn from ``keys``, or from ``strings`` when it is not given."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        strings,
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(strings if keys is None else keys, inner, max_size=4)
        ),
        max_leaves=8,
    )


def objects_with(
    keys: list[str], values: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose keys are mostly the known ones, with values of the expected
    shape (``values``) or of any shape."""
    known = values or {}
    key = st.one_of(st.sampled_from(keys), text)

    def value_for(k: str) -> st.SearchStrategy[Any]:
        return st.one_of(known[k], json_values()) if k in known else json_values()

    pairs = key.flatmap(lambda k: st.tuples(st.just(k), value_for(k)))
    return st.lists(pairs, max_size=6).map(dict)
