"""The enrichment Lambda of the outbox Pipe (DynamoDB stream -> EventBridge bus) on AWS:
`Handler: shared.outbox.pipe.handler`.

The Pipe hands over a batch of stream records (a JSON array, or `{"Records": [...]}` when
invoked like an event source mapping); the function returns one element per event the writes
added, each the envelope itself. The Pipe's EventBridge target then sets
`DetailType: $.type`, `Source: $.source`, and the envelope is the event's detail. The
extraction is the local relay's (`added_events`), so both publish the same events under the
same ids.

Claim check: on AWS the Pipe, not the relay, calls PutEvents, so an envelope whose entry
would exceed 256 KB is offloaded here: its `data` goes to the bucket named by env
`FLEETLINE_CLAIM_CHECK_BUCKET` (the stack's `ClaimCheckBucket`) and the returned envelope
carries `data_ref` under the same id (the key derives from the id, so a retried batch
overwrites the same object). Without the variable such an event raises EventTooLargeError.
AWS clients are opened only for a batch that needs an offload.

Malformed records raise: the Pipe retries the batch and, after its retry limit, sends it to
the Pipe's dead-letter queue with the error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio

from shared.aws import AwsClients
from shared.events import (
    MAX_PUT_EVENTS_ENTRY_BYTES,
    ClaimCheck,
    Envelope,
    EventTooLargeError,
    put_events_entry_size,
    to_put_events_entry,
)
from shared.outbox._publisher import entry_for, entry_size
from shared.outbox._relay import added_events
from shared.tracing import reparent_envelopes

__all__ = ["CLAIM_CHECK_BUCKET_ENV", "enrich", "handler", "offload_large", "oversized"]

CLAIM_CHECK_BUCKET_ENV: Final = "FLEETLINE_CLAIM_CHECK_BUCKET"


def enrich(
    records: Sequence[Mapping[str, Any]], *, attribute: str = "outbox"
) -> list[dict[str, Any]]:
    """The envelopes added by `records`, in stream order (as staged; no offload)."""
    return [e for record in records for e in added_events(record, attribute=attribute)]


def oversized(
    envelopes: Sequence[Mapping[str, Any]], *, limit: int = MAX_PUT_EVENTS_ENTRY_BYTES
) -> list[int]:
    """Indexes of the envelopes whose PutEvents entry would exceed `limit` (pure; sized as
    the relay sizes them, without validating envelopes that fit)."""
    return [
        index for index, envelope in enumerate(envelopes)
        if entry_size(entry_for(envelope, "-")) > limit
    ]


async def offload_large(
    envelopes: Sequence[Mapping[str, Any]], claim_check: ClaimCheck
) -> list[dict[str, Any]]:
    """`envelopes` with every oversized one's data stored in S3 (`data_ref`, same id).

    Raises:
        EventTooLargeError: an envelope is too large even without its data.
        shared.errors.AwsUnavailableError / AwsRequestError: from S3 (the Pipe retries).
    """
    result = [dict(e) for e in envelopes]
    for index in oversized(envelopes, limit=claim_check.limit):
        # An envelope that cannot be validated raises here: the Pipe's DLQ gets the reason.
        stored = await claim_check.store(Envelope.model_validate(result[index]))
        entry = to_put_events_entry(stored, "-", limit=2**63)
        if put_events_entry_size(entry) > claim_check.limit:
            raise EventTooLargeError(put_events_entry_size(entry), claim_check.limit)
        result[index] = json.loads(stored.to_json())
    return result


def handler(event: Any, context: Any = None) -> list[dict[str, Any]]:
    """Lambda entry point.

    Raises:
        StreamRecordError: a malformed record.
        EventTooLargeError: an event over 256 KB and no FLEETLINE_CLAIM_CHECK_BUCKET.
        shared.errors.AwsUnavailableError / AwsRequestError: S3 failed during an offload.
    """
    records = event.get("Records", []) if isinstance(event, Mapping) else event
    if not isinstance(records, Sequence):
        raise TypeError("the Pipe's payload must be a list of stream records")
    envelopes = _published(enrich(records))
    big = oversized(envelopes)
    if not big:
        return envelopes
    bucket = os.environ.get(CLAIM_CHECK_BUCKET_ENV)
    if not bucket:
        first = Envelope.model_validate(envelopes[big[0]])
        size = put_events_entry_size(to_put_events_entry(first, "-", limit=2**63))
        raise EventTooLargeError(size, MAX_PUT_EVENTS_ENTRY_BYTES)

    async def run() -> list[dict[str, Any]]:
        async with AwsClients() as aws:
            return await offload_large(envelopes, ClaimCheck(aws, bucket=bucket))

    return anyio.run(run)


def _published(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelopes leaving through the Pipe, each carrying a PRODUCER span made here for
    its commit context (`shared.tracing.reparent_envelopes`): the Pipe's PutEvents happens
    after this function returns, so the span stands for the hop from the stream to the bus."""
    bus = os.environ.get("FLEETLINE_BUS_NAME", "bus")
    sent, spans = reparent_envelopes(envelopes, f"publish {bus}", attributes={
        "messaging.system": "aws_eventbridge", "messaging.destination.name": bus,
        "messaging.operation.type": "send", "messaging.operation.name": "PutEvents"})
    spans.end()
    return [dict(e) for e in sent]
