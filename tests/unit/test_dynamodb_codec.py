"""The one AttributeValue codec (`shared.dynamodb`): every type both ways, sets and binary one
way whichever form the value arrives in, and refusals that name what was wrong."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest

from shared.dynamodb import from_attr, from_item, to_attr, to_item, wire_json


@pytest.mark.parametrize(
    ("value", "attr"),
    [
        (None, {"NULL": True}),
        (True, {"BOOL": True}),
        (False, {"BOOL": False}),
        (7, {"N": "7"}),
        (-1.5, {"N": "-1.5"}),
        (Decimal("10.25"), {"N": "10.25"}),
        ("text", {"S": "text"}),
        (b"\x00\x01", {"B": b"\x00\x01"}),
        (bytearray(b"ab"), {"B": b"ab"}),
        ({"a": 1, "b": [True, None]}, {"M": {"a": {"N": "1"},
                                            "b": {"L": [{"BOOL": True}, {"NULL": True}]}}}),
        (("x", 2), {"L": [{"S": "x"}, {"N": "2"}]}),
        ({"b", "a"}, {"SS": ["a", "b"]}),
        (frozenset({3, 1}), {"NS": ["1", "3"]}),
        ({b"z", b"y"}, {"BS": [b"y", b"z"]}),
    ],
)
def test_values_encode_to_their_attribute_type(value: Any, attr: dict[str, Any]) -> None:
    assert to_attr(value) == attr


def test_decoding_gives_int_for_whole_numbers_frozensets_and_bytes() -> None:
    item = {
        "n": {"N": "42"}, "f": {"N": "0.5"}, "whole": {"N": "3.0"}, "exp": {"N": "1E+3"},
        "big": {"N": "123456789012345678901234567890"},
        "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5"]}, "b": {"B": b"\x01"},
        "bs": {"BS": [b"\x01", b"\x02"]}, "m": {"M": {"l": {"L": [{"S": "x"}]}}},
        "t": {"BOOL": True}, "none": {"NULL": True},
    }
    assert from_item(item) == {
        "n": 42, "f": 0.5, "whole": 3, "exp": 1000, "big": 123456789012345678901234567890,
        "ss": frozenset({"a", "b"}), "ns": frozenset({1, 2.5}), "b": b"\x01",
        "bs": frozenset({b"\x01", b"\x02"}), "m": {"l": ["x"]}, "t": True, "none": None,
    }
    assert type(from_attr({"N": "3.0"})) is int


def test_binary_in_the_wire_form_decodes_to_the_same_bytes() -> None:
    """A stream record, a Lambda event or `call_decoded` carry B as base64 text; botocore's
    parsed form carries bytes. Both are the same value."""
    raw = b"\x00\xffdata"
    text = base64.b64encode(raw).decode()
    assert from_attr({"B": text}) == from_attr({"B": raw}) == raw
    assert from_attr({"BS": [text]}) == frozenset({raw})


def test_an_item_round_trips() -> None:
    values = {"pk": "a-1", "n": 3, "x": 2.25, "tags": frozenset({"p", "q"}), "blob": b"\x07",
              "doc": {"nested": [1, "two", None, False]}}
    assert from_item(to_item(values)) == values


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (object(), TypeError, "type object"),
        (float("nan"), ValueError, "nan"),
        (float("inf"), ValueError, "inf"),
        (Decimal("NaN"), ValueError, "NaN"),
        (set(), ValueError, "empty sets"),
        ({"a", 1}, ValueError, "only strings"),
        ({True, False}, ValueError, "only strings"),
    ],
)
def test_what_dynamodb_cannot_hold_is_refused(value: Any, error: type[Exception],
                                              match: str) -> None:
    with pytest.raises(error, match=match):
        to_attr(value)


def test_item_errors_name_the_attribute() -> None:
    with pytest.raises(ValueError, match=r"^score: "):
        to_item({"ok": 1, "score": float("nan")})
    with pytest.raises(ValueError, match=r"^n: not a DynamoDB number"):
        from_item({"n": {"N": "twelve"}})
    with pytest.raises(ValueError, match="unknown DynamoDB attribute type 'X'"):
        from_attr({"X": "?"})
    with pytest.raises(ValueError, match="not a DynamoDB attribute value"):
        from_attr({"S": "a", "N": "1"})
    with pytest.raises(ValueError, match="not base64"):
        from_attr({"B": "%%%"})


def test_wire_json_writes_binary_as_base64_text() -> None:
    body = wire_json({"Item": to_item({"pk": "k", "b": b"\x01\x02", "bs": {b"\x03"}})})
    assert json.loads(body) == {"Item": {
        "pk": {"S": "k"}, "b": {"B": "AQI="}, "bs": {"BS": ["Aw=="]}}}
