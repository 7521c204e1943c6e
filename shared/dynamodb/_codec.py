"""Python values <-> DynamoDB attribute values: the one codec of the project.

Encoding (`to_attr`, `to_item`):

    None -> NULL        bool -> BOOL             int, float, Decimal -> N (finite numbers)
    str -> S            bytes, bytearray, memoryview -> B (bytes)
    Mapping -> M        list, tuple -> L
    set, frozenset -> SS, NS or BS (not empty; strings only, numbers only or bytes only;
                      sorted, so one value always encodes the same way)

Decoding (`from_attr`, `from_item`):

    N -> int when the number is whole, else float     B -> bytes     SS, NS, BS -> frozenset
    S -> str   BOOL -> bool   NULL -> None   M -> dict   L -> list

Both shapes an attribute value arrives in decode the same: as botocore parses it (B holds
bytes) and as wire JSON (`call_decoded`, a stream record, a Lambda event: B holds base64
text). `wire_json` writes a request body in the wire form (binary values as base64 text), for
`shared.aws.AwsClients.send_encoded`.

Errors: `TypeError` for a Python type DynamoDB has no attribute type for, `ValueError` for a
value it cannot hold (NaN or infinity, an empty or mixed set) or an attribute value that is
not one; both name what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Set
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

import orjson

__all__ = [
    "AttributeValue",
    "Item",
    "from_attr",
    "from_item",
    "to_attr",
    "to_item",
    "wire_json",
]

AttributeValue: TypeAlias = dict[str, Any]
"""One attribute value, `{"S": "text"}`, `{"N": "12"}`, `{"L": [...]}` ..."""
Item: TypeAlias = dict[str, AttributeValue]
"""An item (or a key): attribute name -> attribute value."""

_BINARY = (bytes, bytearray, memoryview)


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"DynamoDB cannot store the number {value!r}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"DynamoDB cannot store the number {value!r}")
    return str(value)


def _set(value: Set[Any]) -> AttributeValue:
    if not value:
        raise ValueError("DynamoDB has no empty sets; leave the attribute out instead")
    if all(isinstance(v, str) for v in value):
        return {"SS": sorted(value)}
    if all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) for v in value):
        return {"NS": [_number(v) for v in sorted(value)]}
    if all(isinstance(v, _BINARY) for v in value):
        return {"BS": sorted(bytes(v) for v in value)}
    raise ValueError("a set must hold only strings, only numbers or only bytes")


def to_attr(value: Any) -> AttributeValue:
    """The attribute value of `value` (see the module docstring for the mapping).

    Raises:
        TypeError: DynamoDB has no attribute type for `value`'s type (named).
        ValueError: a number that is not finite, an empty set, a set of mixed kinds.
    """
    # The common types first: this runs for every attribute of every item written.
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        return {"N": _number(value)}
    if value is None:
        return {"NULL": True}
    if isinstance(value, Mapping):
        return {"M": {str(k): to_attr(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [to_attr(v) for v in value]}
    if isinstance(value, _BINARY):
        return {"B": bytes(value)}
    if isinstance(value, Set):
        return _set(value)
    raise TypeError(f"DynamoDB cannot store a value of type {type(value).__name__}")


def to_item(values: Mapping[str, Any]) -> Item:
    """A whole item (or key): attribute name -> `to_attr(value)`.

    Raises:
        TypeError, ValueError: as `to_attr`, the message prefixed with the attribute name.
    """
    item: Item = {}
    for name, value in values.items():
        try:
            item[name] = to_attr(value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    return item


def _parse_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a DynamoDB number: {text!r}") from None
    if number.is_finite() and number == number.to_integral_value():
        return int(number)
    return float(number)


def _binary(raw: Any) -> bytes:
    if isinstance(raw, _BINARY):
        return bytes(raw)
    if isinstance(raw, str):  # wire JSON: base64 text
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a binary value that is not base64") from None
    raise ValueError(f"a binary value must be bytes or base64 text, not {type(raw).__name__}")


def from_attr(attr: Mapping[str, Any]) -> Any:
    """The Python value of one attribute value (see the module docstring).

    Raises:
        ValueError: `attr` is not an attribute value (not one type tag, an unknown tag, a
            number or binary value that does not parse).
    """
    if not isinstance(attr, Mapping) or len(attr) != 1:
        raise ValueError(f"not a DynamoDB attribute value: {attr!r:.80}")
    ((kind, raw),) = attr.items()
    if kind == "S":
        return raw
    if kind == "N":
        return _parse_number(raw)
    if kind == "M":
        return {k: from_attr(v) for k, v in raw.items()}
    if kind == "L":
        return [from_attr(v) for v in raw]
    if kind == "BOOL":
        return bool(raw)
    if kind == "NULL":
        return None
    if kind == "SS":
        return frozenset(raw)
    if kind == "NS":
        return frozenset(_parse_number(v) for v in raw)
    if kind == "B":
        return _binary(raw)
    if kind == "BS":
        return frozenset(_binary(v) for v in raw)
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def from_item(item: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A whole item as Python values.

    Raises:
        ValueError: as `from_attr`, the message prefixed with the attribute name.
    """
    values: dict[str, Any] = {}
    for name, attr in item.items():
        try:
            values[name] = from_attr(attr)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return values


def _wire_default(value: Any) -> Any:
    if isinstance(value, _BINARY):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode a value of type {type(value).__name__} as JSON")


def wire_json(request: Mapping[str, Any]) -> bytes:
    """The JSON body of a request (DynamoDB JSON attribute values inside) in the wire form:
    binary values (bytes in B and BS) become base64 text, as botocore would send them.

    Raises:
        TypeError: a value JSON cannot hold.
    """
    return orjson.dumps(request, default=_wire_default)
