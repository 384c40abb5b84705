"""bgq.safejson: hostile JSON (deep nesting, huge integers, NaN) is a PayloadError, never a crash;
ordinary documents parse exactly as json.loads parses them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgq import safejson
from bgq.errors import PayloadError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_ordinary_documents_parse_like_json_loads(value: Any) -> None:
    text = json.dumps(value)
    assert safejson.loads(text) == json.loads(text)


@pytest.mark.parametrize("depth", [65, 990, 100_000])
def test_deep_nesting_is_a_payload_error(depth: int) -> None:
    with pytest.raises(PayloadError, match="nested deeper than 64 levels"):
        safejson.loads("[" * depth + "]" * depth)
    with pytest.raises(PayloadError, match="nested deeper than 64 levels"):
        safejson.loads('{"a":' * depth + "1" + "}" * depth)


def test_depth_limit_is_exact() -> None:
    assert safejson.loads("[" * 64 + "]" * 64, what="x") is not None
    with pytest.raises(PayloadError, match=r"^x: JSON nested deeper than 64"):
        safejson.loads("[" * 65 + "]" * 65, what="x")
    assert safejson.loads("[" * 66 + "]" * 66, max_depth=66) is not None


@pytest.mark.parametrize("digits", [101, 4301, 100_000])
def test_huge_integers_are_payload_errors(digits: int) -> None:
    with pytest.raises(PayloadError, match=f"{digits} digits"):
        safejson.loads("[" + "9" * digits + "]")
    with pytest.raises(PayloadError, match=f"{digits} digits"):
        safejson.loads("-" + "9" * digits)


def test_integers_up_to_the_limit_are_exact() -> None:
    assert safejson.loads("9" * 100) == int("9" * 100)
    assert safejson.loads("-" + "9" * 100) == -int("9" * 100)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_non_finite_constants_are_refused(text: str) -> None:
    with pytest.raises(PayloadError, match="not valid JSON"):
        safejson.loads(text)


def test_malformed_json_still_raises_json_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        safejson.loads('{"a": ')
    with pytest.raises(UnicodeDecodeError):
        safejson.loads(b"\xff\xfe\xfa")


def test_check_walks_python_values_without_recursion() -> None:
    deep: list[Any] = []
    for _ in range(200_000):
        deep = [deep]
    with pytest.raises(PayloadError, match="nested deeper"):
        safejson.check(deep)
    with pytest.raises(PayloadError, match="more than 100 digits"):
        safejson.check({"n": (1, 2, {"m": 2**400})})
    safejson.check({"n": [True, 2**332, -(10**99), "x" * 10_000]})
