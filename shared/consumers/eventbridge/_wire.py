"""The wire form of EventBridge: a `Message` from an event as a rule target receives it
(pure). EventBridge has no poller: only Lambda (`shared.hosts.lambda_.eventbridge_handler`)
receives its events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.consumers._message import Message, SourceKind

__all__ = ["message_from_eventbridge"]


def message_from_eventbridge(event: Mapping[str, Any]) -> Message:
    """A `Message` from an EventBridge event: id = the event's id, body = the whole event as
    JSON (the envelope is in `detail`), source_name = its `source`, attribute
    `detail-type`."""
    return Message(
        id=str(event.get("id", "")),
        body=json.dumps(event, separators=(",", ":"), default=str),
        source=SourceKind.EVENTBRIDGE,
        source_name=str(event.get("source", "")),
        attributes={"detail-type": str(event.get("detail-type", ""))},
        raw=event,
    )
