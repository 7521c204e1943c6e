"""Python values <-> DynamoDB attribute values (the low-level client's wire shape).

Numbers come back as `int` when integral and `float` otherwise; sets come back as
`frozenset`. Empty sets do not exist in DynamoDB and are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from decimal import Decimal
from typing import Any

__all__ = ["from_attr", "from_item", "to_attr", "to_item"]


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError(f"DynamoDB cannot store the number {value!r}")
    return str(value)


def to_attr(value: Any) -> dict[str, Any]:
    """One attribute value. Raises ValueError (naming the type) for what DynamoDB cannot hold."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        return {"N": _number(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (bytes, bytearray)):
        return {"B": bytes(value)}
    if isinstance(value, Mapping):
        return {"M": {str(k): to_attr(v) for k, v in value.items()}}
    if isinstance(value, Set):
        if not value:
            raise ValueError("DynamoDB has no empty sets; drop the attribute instead")
        if all(isinstance(v, str) for v in value):
            return {"SS": sorted(value)}
        if all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) for v in value):
            return {"NS": sorted(_number(v) for v in value)}
        if all(isinstance(v, (bytes, bytearray)) for v in value):
            return {"BS": sorted(bytes(v) for v in value)}
        raise ValueError("a set must hold only strings, only numbers or only bytes")
    if isinstance(value, (list, tuple)):
        return {"L": [to_attr(v) for v in value]}
    raise ValueError(f"cannot store a value of type {type(value).__name__} in DynamoDB")


def _parse_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        as_float = float(text)
        return int(as_float) if as_float.is_integer() and "e" not in text.lower() else as_float


def from_attr(attr: Mapping[str, Any]) -> Any:
    """The Python value of one attribute value."""
    ((kind, raw),) = attr.items()
    if kind == "S":
        return raw
    if kind == "N":
        return _parse_number(raw)
    if kind == "BOOL":
        return bool(raw)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: from_attr(v) for k, v in raw.items()}
    if kind == "L":
        return [from_attr(v) for v in raw]
    if kind == "SS":
        return frozenset(raw)
    if kind == "NS":
        return frozenset(_parse_number(v) for v in raw)
    if kind == "B":
        return bytes(raw)
    if kind == "BS":
        return frozenset(bytes(v) for v in raw)
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def to_item(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A whole item (attribute name -> value)."""
    return {name: to_attr(value) for name, value in values.items()}


def from_item(item: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {name: from_attr(attr) for name, attr in item.items()}
