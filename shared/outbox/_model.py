"""The data of a unit of work: where an aggregate lives, what was read, what a handler
decided, what is staged. The item these become (and are read from) is `shared.outbox._item`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shared.events import Envelope
from shared.inbox import InboxConfig

__all__ = [
    "Aggregate",
    "Decision",
    "Emitted",
    "EventDraft",
    "ItemRef",
    "OutboxConfig",
    "StagedWrite",
]


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    """Names of the bookkeeping attributes and the limits of a commit."""

    version_attribute: str = "version"
    sequence_attribute: str = "event_seq"
    outbox_attribute: str = "outbox"
    inbox: InboxConfig = field(default_factory=InboxConfig)
    max_operations: int = 100  # DynamoDB's TransactWriteItems limit

    @functools.cached_property
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
        # Worked out once: every map of a batch is keyed by it (the key is not to change).
        object.__setattr__(self, "_token", self.table + "|" + json.dumps(
            dict(self.key), sort_keys=True, default=str))

    @property
    def id(self) -> str:
        if self.aggregate_id is not None:
            return self.aggregate_id
        return "#".join(str(v) for v in self.key.values())

    @property
    def token(self) -> str:
        """A stable string for maps and logs: table plus key."""
        token: str = self.__dict__["_token"]
        return token


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
