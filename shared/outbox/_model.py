"""The data of a unit of work, and the pure functions that turn it into DynamoDB requests.

Item layout (one aggregate = one item):

    <key attributes>         as the table defines them
    <domain attributes>      the state the service decides
    version    N             optimistic concurrency: every write is conditional on it
    event_seq  N             sequence number of the aggregate's last event
    outbox     L of S        the events THIS write added (envelopes as JSON); the next write
                             replaces it, so the item never grows: the stream is the outbox
    inbox      L of S        ids of the last `window` events applied to this item (inbox)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shared.events import Envelope
from shared.inbox import InboxConfig, InboxMode, inbox_put, remember
from shared.outbox._attrs import from_item, to_attr, to_item
from shared.outbox._errors import OutboxError

__all__ = [
    "Aggregate",
    "Decision",
    "Emitted",
    "EventDraft",
    "ItemRef",
    "OutboxConfig",
    "StagedWrite",
    "aggregate_from_item",
    "build_write",
    "write_operations",
]


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    """Names of the bookkeeping attributes and the limits of a commit."""

    version_attribute: str = "version"
    sequence_attribute: str = "event_seq"
    outbox_attribute: str = "outbox"
    inbox: InboxConfig = field(default_factory=InboxConfig)
    max_operations: int = 100  # DynamoDB's TransactWriteItems limit

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset(
            {self.version_attribute, self.sequence_attribute, self.outbox_attribute,
             self.inbox.attribute}
        )


@dataclass(frozen=True, kw_only=True)
class ItemRef:
    """Where an aggregate lives: table name and primary key (Python values)."""

    table: str
    key: Mapping[str, Any]
    aggregate_id: str | None = None  # default: the key values joined by '#'

    def __post_init__(self) -> None:
        if not self.table:
            raise ValueError("table must not be empty")
        if not self.key:
            raise ValueError("key must name at least the partition key")

    @property
    def id(self) -> str:
        if self.aggregate_id is not None:
            return self.aggregate_id
        return "#".join(str(v) for v in self.key.values())

    @property
    def token(self) -> str:
        """A stable string for maps and logs: table plus key."""
        return self.table + "|" + json.dumps(dict(self.key), sort_keys=True, default=str)


@dataclass(frozen=True, kw_only=True)
class Aggregate:
    """An item as it was read. `version == 0` means it does not exist yet."""

    ref: ItemRef
    state: Mapping[str, Any]
    version: int = 0
    last_sequence: int = 0
    processed: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        return self.version > 0

    def seen(self, event_id: str) -> bool:
        """True when the in-item inbox holds `event_id` (its effect is already applied)."""
        return event_id in self.processed


@dataclass(frozen=True, kw_only=True)
class EventDraft:
    """An event to emit: an instance of a model declared with `@event_type`, plus what the
    envelope cannot infer. The unit of work wraps it with `Envelope.new` at commit: new id,
    time, aggregate id, the next per-aggregate sequence, the trace context of the commit, and
    correlation / causation from `causation` (the event being handled, if any)."""

    event: BaseModel
    causation: Envelope | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    tenant_id: str | None = None
    # The trace context the event carries; None: the context current at staging. A batch
    # handler sets it to the consumer span of the message that caused the event, so one
    # batch commit keeps every message's trace going (shared.outbox.BatchCommitter).
    trace: Mapping[str, str] | None = None


Emitted = BaseModel | EventDraft


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What a handler decided for one event: the aggregate's new domain state (all domain
    attributes; bookkeeping is added by the unit of work) and the events to publish (declared
    event models, or EventDraft for more control)."""

    state: Mapping[str, Any]
    events: Sequence[Emitted] = ()


@dataclass(frozen=True, kw_only=True)
class StagedWrite:
    """One conditional write of one aggregate: new state, envelopes, processed ids."""

    aggregate: Aggregate
    state: Mapping[str, Any]
    envelopes: tuple[Envelope, ...] = ()
    processed_ids: tuple[str, ...] = ()


def aggregate_from_item(
    ref: ItemRef, item: Mapping[str, Mapping[str, Any]] | None, config: OutboxConfig
) -> Aggregate:
    """The Aggregate for a raw DynamoDB item (None: not there)."""
    if not item:
        return Aggregate(ref=ref, state={})
    values = from_item(item)
    version = int(values.pop(config.version_attribute, 0) or 0)
    last_sequence = int(values.pop(config.sequence_attribute, 0) or 0)
    values.pop(config.outbox_attribute, None)
    processed = values.pop(config.inbox.attribute, None) or []
    for name in ref.key:
        values.pop(name, None)
    return Aggregate(
        ref=ref, state=values, version=version, last_sequence=last_sequence,
        processed=tuple(str(p) for p in processed),
    )


def _check_state(write: StagedWrite, config: OutboxConfig) -> None:
    for name in write.state:
        if name in config.reserved:
            raise OutboxError(f"state attribute {name!r} is reserved for the unit of work")
        if name in write.aggregate.ref.key:
            raise OutboxError(f"state attribute {name!r} is part of the key; it cannot change")


def write_operations(write: StagedWrite, config: OutboxConfig) -> int:
    """How many transaction operations this write takes (1, plus one per inbox record)."""
    if config.inbox.mode is InboxMode.TABLE:
        return 1 + len(write.processed_ids)
    return 1


def build_write(write: StagedWrite, config: OutboxConfig, *, now: float) -> list[dict[str, Any]]:
    """TransactWriteItems entries for one staged write: the aggregate `Put` first (conditional
    on the version read), then the inbox-table `Put`s when the inbox is a table.

    Raises OutboxError when the state uses a reserved or key attribute name, or a value
    DynamoDB cannot store (the message names the attribute)."""
    _check_state(write, config)
    aggregate = write.aggregate
    values: dict[str, Any] = dict(aggregate.ref.key)
    values.update(write.state)
    values[config.version_attribute] = aggregate.version + 1
    values[config.sequence_attribute] = aggregate.last_sequence + len(write.envelopes)
    item: dict[str, Any] = {}
    for name, value in values.items():
        try:
            item[name] = to_attr(value)
        except ValueError as exc:
            raise OutboxError(f"state attribute {name!r}: {exc}") from None
    if write.envelopes:
        item[config.outbox_attribute] = {
            "L": [{"S": e.to_json()} for e in write.envelopes]
        }
    inbox = config.inbox
    if inbox.mode is InboxMode.IN_ITEM:
        ids = remember(aggregate.processed, write.processed_ids, inbox.window)
        if ids:
            item[inbox.attribute] = to_attr(ids)
    put: dict[str, Any] = {"TableName": aggregate.ref.table, "Item": item}
    if aggregate.exists:
        put["ConditionExpression"] = "#v = :v"
        put["ExpressionAttributeNames"] = {"#v": config.version_attribute}
        put["ExpressionAttributeValues"] = {":v": {"N": str(aggregate.version)}}
    else:
        first_key = next(iter(aggregate.ref.key))
        put["ConditionExpression"] = "attribute_not_exists(#k)"
        put["ExpressionAttributeNames"] = {"#k": first_key}
    entries = [put]
    if inbox.mode is InboxMode.TABLE:
        entries.extend(inbox_put(inbox, event_id, now=now) for event_id in write.processed_ids)
    return entries


def key_of(ref: ItemRef) -> dict[str, dict[str, Any]]:
    return to_item(ref.key)
