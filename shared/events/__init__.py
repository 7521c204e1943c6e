"""Events: the envelope, the registry of event types, decoding from every transport, the claim
check for payloads over EventBridge's 256 KB, and JSON Schema export.

Declaring and publishing (a service's `events.py`, listed in the `fleetline.events` entry-point
group):

    @event_type("OrderPlaced", source="fleetline.orders", version=1)
    class OrderPlaced(BaseModel):
        order_id: str

    envelope = Envelope.new(OrderPlaced(order_id="o-1"), aggregate_id="o-1", sequence=1)
    entry = to_put_events_entry(envelope, bus_name)

Consuming:

    load_registered_events()             # once, at start-up
    event = registry.decode(message.body)  # or await registry.decode_async(..., claim_check=cc)
    match event.data:
        case OrderPlaced(order_id=order_id): ...

Errors derive from `shared.errors` (see `shared.events._errors`): everything a bad message can
cause is an `InvalidMessageError` naming the field, so consumers dead-letter it with the reason.
"""

from shared.events._claimcheck import ClaimCheck
from shared.events._codec import parse_envelope
from shared.events._envelope import DataRef, Envelope, TypedEvent
from shared.events._errors import (
    ClaimCheckIntegrityError,
    ClaimCheckNotConfiguredError,
    EventTooLargeError,
    InvalidEventDataError,
    MalformedMessageError,
    UnknownEventTypeError,
)
from shared.events._eventbridge import (
    MAX_PUT_EVENTS_ENTRY_BYTES,
    put_events_entry_size,
    to_put_events_entry,
)
from shared.events._registry import (
    ClaimCheckReader,
    EventRegistry,
    event_type,
    load_registered_events,
    registry,
)
from shared.events._schemas import export_schemas
from shared.events._spec import IRREGULAR_PAST_TENSE

__all__ = [
    "IRREGULAR_PAST_TENSE",
    "MAX_PUT_EVENTS_ENTRY_BYTES",
    "ClaimCheck",
    "ClaimCheckIntegrityError",
    "ClaimCheckNotConfiguredError",
    "ClaimCheckReader",
    "DataRef",
    "Envelope",
    "EventRegistry",
    "EventTooLargeError",
    "InvalidEventDataError",
    "MalformedMessageError",
    "TypedEvent",
    "UnknownEventTypeError",
    "event_type",
    "export_schemas",
    "load_registered_events",
    "parse_envelope",
    "put_events_entry_size",
    "registry",
    "to_put_events_entry",
]
