"""Reading order events off a queue: the envelope (raw, or inside an EventBridge event) and
its typed data. Unknown fields are ignored; an unknown type or invalid data is refused with
InvalidMessageError (the message goes to the DLQ with the reason)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from services.orders.events import EVENT_TYPES, OrderEvent
from shared.consumers import Message
from shared.errors import InvalidMessageError

__all__ = ["OrderEnvelope", "decode_order_event"]


@dataclass(frozen=True, kw_only=True)
class OrderEnvelope:
    id: str
    type: str
    sequence: int
    time: str | None
    correlation_id: str | None
    trace: Mapping[str, str]
    data: OrderEvent
    raw: Mapping[str, Any]


def _carrier(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def decode_order_event(message: Message) -> OrderEnvelope:
    """Raises InvalidMessageError naming the field that is wrong."""
    try:
        body = json.loads(message.body)
    except ValueError as exc:
        raise InvalidMessageError(f"not JSON ({exc})", field="body") from exc
    if isinstance(body, dict) and isinstance(body.get("detail"), dict):
        body = body["detail"]  # an EventBridge event delivered to SQS
    if not isinstance(body, dict):
        raise InvalidMessageError("an event envelope must be a JSON object", field="body")
    model = EVENT_TYPES.get(str(body.get("type")))
    if model is None:
        raise InvalidMessageError(f"not an order event: {body.get('type')!r}", field="type")
    event_id = body.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidMessageError("missing", field="id")
    try:
        data = model.model_validate(body.get("data"))
    except ValidationError as exc:
        raise InvalidMessageError(f"invalid {model.type_name} data: {exc}", field="data") from exc
    sequence = body.get("sequence")
    return OrderEnvelope(
        id=event_id, type=model.type_name,
        sequence=sequence if isinstance(sequence, int) else model.sequence,
        time=body.get("time") if isinstance(body.get("time"), str) else None,
        correlation_id=body.get("correlation_id"),
        trace=_carrier(body.get("trace")),
        data=data, raw=body,
    )
