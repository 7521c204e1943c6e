"""The inbox: a consumer records the id of every event it applied in the same atomic write as
the effect, so a redelivery (SQS at-least-once, a relay restart, a DLQ redrive, an archive
replay) is recognised and skipped. The id is always the envelope id, never a transport id.

Two places to keep the ids, chosen per consumer with `InboxConfig.mode`:

- `InboxMode.IN_ITEM` (default, cheapest): the aggregate item the effect writes carries a list
  attribute (`inbox`) with the ids of the last `window` events applied to it. The check and
  the record cost nothing extra: the write that changes the state is conditional on the
  version that was read, and that read showed the list. Window: the last `window` events *per
  aggregate*. A duplicate that arrives after `window` newer events of the same aggregate is
  not recognised; handlers that need more also ignore events whose source sequence is not
  newer than the one they stored (see docs/outbox.md).
- `InboxMode.TABLE`: one item per processed event in a separate table
  (`<consumer>#<event id>`, `attribute_not_exists`), written in the same TransactWriteItems as
  the effect, expiring after `retention` through the TTL attribute `expires_at`. The default
  retention (`DEFAULT_RETENTION`, 45 days) outlives every window that can bring a message
  back: an archive replay (30 days) of an event that then fails into a DLQ and is redriven
  within its 14 days (tests/unit/test_template.py keeps the template to it). Costs a
  transaction: 2 write units per KB for the effect item and for the inbox item.

The skip is counted by the consumer that finds it (`duplicates skipped`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = [
    "DEFAULT_RETENTION",
    "InboxConfig",
    "InboxMode",
    "inbox_put",
    "record_key",
    "remember",
]

# Archives keep 30 days, DLQs 14: a copy can come back 44 days after the effect.
DEFAULT_RETENTION = timedelta(days=45)


class InboxMode(enum.StrEnum):
    IN_ITEM = "in-item"
    TABLE = "table"


@dataclass(frozen=True, kw_only=True)
class InboxConfig:
    """Where a consumer keeps the ids of the events it applied."""

    mode: InboxMode = InboxMode.IN_ITEM
    attribute: str = "inbox"
    window: int = 20
    table: str | None = None
    key_attribute: str = "id"
    ttl_attribute: str = "expires_at"
    consumer: str = "default"
    retention: timedelta = DEFAULT_RETENTION

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.mode is InboxMode.TABLE and not self.table:
            raise ValueError("table is required when mode is InboxMode.TABLE")
        if self.retention <= timedelta(0):
            raise ValueError("retention must be positive")


def remember(recent: Sequence[str], new_ids: Sequence[str], window: int) -> list[str]:
    """The in-item id list after applying `new_ids`: oldest first, at most `window` long."""
    merged = [i for i in recent if i not in new_ids] + list(dict.fromkeys(new_ids))
    return merged[-window:]


def record_key(consumer: str, event_id: str) -> str:
    """The inbox table key of one processed event."""
    return f"{consumer}#{event_id}"


def inbox_put(config: InboxConfig, event_id: str, *, now: float) -> dict[str, Any]:
    """The TransactWriteItems `Put` that records `event_id` in the inbox table, failing with
    ConditionalCheckFailed when it is already there."""
    if config.mode is not InboxMode.TABLE or config.table is None:
        raise ValueError("inbox_put needs an InboxConfig with mode=InboxMode.TABLE")
    return {
        "TableName": config.table,
        "Item": {
            config.key_attribute: {"S": record_key(config.consumer, event_id)},
            config.ttl_attribute: {"N": str(int(now + config.retention.total_seconds()))},
        },
        "ConditionExpression": "attribute_not_exists(#k)",
        "ExpressionAttributeNames": {"#k": config.key_attribute},
    }
