"""The enrichment Lambda of the outbox Pipe (DynamoDB stream -> EventBridge bus) on AWS:
`Handler: shared.outbox.pipe.handler`.

The Pipe hands over a batch of stream records (a JSON array, or `{"Records": [...]}` when
invoked like an event source mapping); the function returns one element per event the writes
added, each the envelope itself. The Pipe's EventBridge target then sets
`DetailType: $.type`, `Source: $.source`, and the envelope is the event's detail. The
extraction is the local relay's (`added_events`), so both publish the same events under the
same ids.

Malformed records raise: the Pipe retries the batch and, after its retry limit, sends it to
the Pipe's dead-letter queue with the error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.outbox._relay import added_events

__all__ = ["enrich", "handler"]


def enrich(
    records: Sequence[Mapping[str, Any]], *, attribute: str = "outbox"
) -> list[dict[str, Any]]:
    """The envelopes added by `records`, in stream order."""
    return [e for record in records for e in added_events(record, attribute=attribute)]


def handler(event: Any, context: Any = None) -> list[dict[str, Any]]:
    """Lambda entry point. Raises StreamRecordError for malformed records."""
    records = event.get("Records", []) if isinstance(event, Mapping) else event
    if not isinstance(records, Sequence):
        raise TypeError("the Pipe's payload must be a list of stream records")
    return enrich(records)
