"""What `POST /orders` accepts, and how a refusal names every bad field.

Decisions written down where the issue is silent:
* Unknown fields are refused (`extra="forbid"`): at the edge a typo should be a 400, not a
  silently ignored option. (Events on the bus, by contrast, ignore unknown fields.)
* Skus must be in the catalogue; quantities 1..100; at most 50 lines; currency EUR/USD/GBP.
* Bodies over `MAX_BODY_BYTES` are refused with 413 before parsing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.orders.domain import CATALOG

__all__ = [
    "MAX_BODY_BYTES",
    "AddressIn",
    "FieldError",
    "ItemIn",
    "PlaceOrderRequest",
    "field_errors",
    "parse_place_order",
]

MAX_BODY_BYTES: Final = 16 * 1024


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ItemIn(_In):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int = Field(ge=1, le=100, strict=True)

    @field_validator("sku")
    @classmethod
    def _known_sku(cls, value: str) -> str:
        if value not in CATALOG:
            raise ValueError(f"unknown sku {value!r}")
        return value


class AddressIn(_In):
    name: str = Field(min_length=1, max_length=100)
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class PlaceOrderRequest(_In):
    customer_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    items: list[ItemIn] = Field(min_length=1, max_length=50)
    currency: Literal["EUR", "USD", "GBP"]
    shipping_address: AddressIn


FieldError = dict[str, str]


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "body"


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Every bad field as `{"field": "items[1].quantity", "message": ...}`."""
    return [
        {"field": _path(err["loc"]), "message": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


def parse_place_order(
    body: str | bytes | None,
) -> tuple[PlaceOrderRequest | None, list[FieldError]]:
    """The request, or the list of field errors (never both). Malformed JSON is one error on
    `body`; a body that is not an object too."""
    if not body:
        return None, [{"field": "body", "message": "a JSON object is required"}]
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [{"field": "body", "message": (
                f"not UTF-8 text: byte 0x{body[exc.start]:02x} at position {exc.start} "
                f"({exc.reason}); send the JSON encoded as UTF-8")}]
    try:
        raw: Any = json.loads(body)
    except ValueError as exc:
        return None, [{"field": "body", "message": f"malformed JSON: {exc}"}]
    if not isinstance(raw, dict):
        return None, [{"field": "body", "message": "a JSON object is required"}]
    try:
        return PlaceOrderRequest.model_validate(raw), []
    except ValidationError as exc:
        return None, field_errors(exc)
