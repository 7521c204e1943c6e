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
    if isinstance(body, dict) and ("detail" in body or "detail-type" in body):
        detail = body.get("detail")  # an EventBridge event delivered to SQS
        if not isinstance(detail, dict):
            raise InvalidMessageError(
                f"the {body.get('detail-type') or 'EventBridge'} event's detail must be an "
                f"event envelope (a JSON object), got {type(detail).__name__}", field="detail")
        body = detail
    if not isinstance(body, dict):
        raise InvalidMessageError("an event envelope must be a JSON object", field="body")
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidMessageError(
            f"missing: the envelope has no event type (fields: {sorted(body)[:8]})",
            field="type")
    model = EVENT_TYPES.get(kind)
    if model is None:
        raise InvalidMessageError(
            f"{kind!r} is not an order event (expected one of {sorted(EVENT_TYPES)})",
            field="type")
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
