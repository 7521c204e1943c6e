"""The events of the orders bounded context: the `data` of their envelopes.

Event-carried state: every event carries what its consumers need (customer, lines, totals,
currency), so the notification worker and the projections never call back into the orders
service. Unknown fields are ignored (`extra="ignore"`); new optional fields get defaults,
so version 1 and a later version 2 can coexist on the bus.

Sequence per order (the envelope's `sequence`): OrderPlaced = 1, OrderConfirmed /
OrderCancelled = 2. Read models keep the highest sequence they have applied, so an
out-of-order pair still ends in the right state.
"""

from __future__ import annotations

from typing import ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from shared.events import event_type

__all__ = [
    "EVENT_TYPES",
    "SOURCE",
    "Address",
    "OrderCancelled",
    "OrderConfirmed",
    "OrderEvent",
    "OrderLine",
    "OrderPlaced",
]

SOURCE: Final = "fleetline.orders"  # the envelope source and EventBridge Source


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Address(_Model):
    name: str
    line1: str
    line2: str | None = None
    city: str
    postal_code: str
    country: str  # ISO 3166-1 alpha-2


class OrderLine(_Model):
    sku: str
    quantity: int = Field(gt=0)
    unit_price: int = Field(ge=0, description="minor units (cents)")

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_price


class OrderEvent(_Model):
    """Fields every order event carries."""

    type_name: ClassVar[str] = ""
    sequence: ClassVar[int] = 0
    version: ClassVar[int] = 1

    order_id: str
    customer_id: str
    items: tuple[OrderLine, ...]
    currency: str
    total: int = Field(ge=0, description="minor units (cents)")


@event_type("OrderPlaced", source=SOURCE, version=1)
class OrderPlaced(OrderEvent):
    type_name: ClassVar[str] = "OrderPlaced"
    sequence: ClassVar[int] = 1

    shipping_address: Address
    placed_at: str  # ISO 8601 UTC


@event_type("OrderConfirmed", source=SOURCE, version=1)
class OrderConfirmed(OrderEvent):
    type_name: ClassVar[str] = "OrderConfirmed"
    sequence: ClassVar[int] = 2

    placed_at: str | None = None
    confirmed_at: str | None = None
    shipment_id: str | None = None
    payment_id: str | None = None


@event_type("OrderCancelled", source=SOURCE, version=1)
class OrderCancelled(OrderEvent):
    type_name: ClassVar[str] = "OrderCancelled"
    sequence: ClassVar[int] = 2

    placed_at: str | None = None
    cancelled_at: str | None = None
    reason: str = Field(description="the typed error that ended the saga, e.g. PaymentDeclined")
    detail: str | None = None


EVENT_TYPES: Final[dict[str, type[OrderEvent]]] = {
    model.type_name: model for model in (OrderPlaced, OrderConfirmed, OrderCancelled)
}
