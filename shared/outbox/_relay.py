"""The relay: from the table's stream to the bus.

A stream record of an item written by a unit of work carries, in its NewImage, the events that
write added (`outbox`). `added_events` extracts them (pure; also used by the Pipe's
enrichment Lambda, `shared.outbox.pipe`): the envelopes in NewImage whose ids are not in
OldImage, so a record of a write that did not touch the outbox publishes nothing when the
stream has NEW_AND_OLD_IMAGES, and republishes under the same ids (dropped by inboxes) with
NEW_IMAGE only.

`Relay` is a BatchHandler over DynamoDB stream Messages (the body is the stream record JSON):
it publishes with `EventPublisher` (order per aggregate, partial-failure retry, original ids)
and maps each record to an Outcome: all its events published -> SUCCEEDED; an event
EventBridge refuses for good -> DEAD_LETTER; otherwise RETRY (the stream consumer does not
checkpoint past it, so a restart publishes it again under the same id).
An event over 256 KB goes out claim-checked (data in S3, `data_ref` in the envelope, same id)
when the config names a claim-check bucket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from shared import metrics
from shared.aws import AwsClients
from shared.consumers import BatchResult, Message, Outcome
from shared.events import ClaimCheck
from shared.outbox._errors import StreamRecordError
from shared.outbox._publisher import EventPublisher, PublisherConfig, SendEntries

__all__ = ["Relay", "added_events", "record_created_at"]

_log = structlog.get_logger("shared.outbox.relay")

LagObserver = Callable[[float], None]


def _outbox(image: Any, attribute: str) -> list[dict[str, Any]]:
    if not isinstance(image, Mapping):
        return []
    attr = image.get(attribute)
    if attr is None:
        return []
    if not isinstance(attr, Mapping) or "L" not in attr:
        raise StreamRecordError(f"{attribute}: expected a list attribute, got {attr!r:.80}")
    events: list[dict[str, Any]] = []
    for position, element in enumerate(attr["L"]):
        text = element.get("S") if isinstance(element, Mapping) else None
        if not isinstance(text, str):
            raise StreamRecordError(f"{attribute}[{position}]: expected a string")
        try:
            envelope = json.loads(text)
        except ValueError as exc:
            raise StreamRecordError(f"{attribute}[{position}]: invalid JSON ({exc})") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("id"), str):
            raise StreamRecordError(f"{attribute}[{position}]: envelope without an id")
        for name in ("type", "source"):
            if not isinstance(envelope.get(name), str):
                raise StreamRecordError(f"{attribute}[{position}].{name}: missing")
        events.append(envelope)
    return events


def added_events(record: Mapping[str, Any], *, attribute: str = "outbox") -> list[dict[str, Any]]:
    """The envelopes a stream record's write added, in the order they were staged.

    Raises StreamRecordError (naming the field) when the record or its outbox is malformed."""
    if record.get("eventName") == "REMOVE":
        return []
    change = record.get("dynamodb")
    if not isinstance(change, Mapping):
        raise StreamRecordError("dynamodb: missing from the stream record")
    new = _outbox(change.get("NewImage"), attribute)
    if not new:
        return []
    old_ids = {e["id"] for e in _outbox(change.get("OldImage"), attribute)}
    return [e for e in new if e["id"] not in old_ids]


def record_created_at(record: Mapping[str, Any]) -> float | None:
    """The record's ApproximateCreationDateTime as epoch seconds (number, ISO text or
    datetime, as the various hosts serialise it)."""
    change = record.get("dynamodb")
    value = change.get("ApproximateCreationDateTime") if isinstance(change, Mapping) else None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


class Relay:
    """BatchHandler: publish the events of DynamoDB stream records to an EventBridge bus.

    `on_lag` receives, per record, now minus its approximate creation time (seconds): the
    relay lag metric; by default it feeds `shared.metrics.consumer(metrics_name)` (`Lag`)."""

    def __init__(
        self,
        aws: AwsClients | None,
        config: PublisherConfig,
        *,
        attribute: str = "outbox",
        on_lag: LagObserver | None = None,
        send: SendEntries | None = None,
        metrics_name: str = "outbox-relay",
        claim_check: ClaimCheck | None = None,
    ) -> None:
        """Events over 256 KB are claim-checked to S3 when `config.claim_check_bucket` is set
        or `claim_check` is given (see `shared.outbox._publisher`); otherwise dead-lettered."""
        self._publisher = EventPublisher(aws, config, send=send, claim_check=claim_check)
        self._attribute = attribute
        self._on_lag = on_lag if on_lag is not None else metrics.consumer(metrics_name).observe_lag

    async def __call__(self, messages: Sequence[Message]) -> BatchResult:
        outcomes: dict[str, Outcome] = {}
        reasons: dict[str, str] = {}
        per_message: dict[str, list[str]] = {}
        envelopes: list[dict[str, Any]] = []
        now = time.time()
        for message in messages:
            try:
                record = json.loads(message.body)
                if not isinstance(record, dict):
                    raise StreamRecordError("stream record: expected a JSON object")
                events = added_events(record, attribute=self._attribute)
            except (ValueError, StreamRecordError) as exc:
                outcomes[message.id] = Outcome.DEAD_LETTER
                reasons[message.id] = f"unreadable stream record: {exc}"
                _log.error("relay_bad_record", message_id=message.id, error=str(exc))
                continue
            created = message.approximate_arrival or record_created_at(record)
            if created is not None and self._on_lag is not None:
                self._on_lag(max(0.0, now - created))
            per_message[message.id] = [e["id"] for e in events]
            envelopes.extend(events)
        report = await self._publisher.publish(envelopes)
        for message_id, ids in per_message.items():
            problems = [report.failed[i] for i in ids if i in report.failed]
            if not problems:
                outcomes[message_id] = Outcome.SUCCEEDED
            elif any(i in report.permanent for i in ids):
                outcomes[message_id] = Outcome.DEAD_LETTER
                reasons[message_id] = "; ".join(problems)
            else:
                outcomes[message_id] = Outcome.RETRY
                reasons[message_id] = "; ".join(problems)
        if envelopes:
            _log.debug("relay_published", events=len(report.published),
                       failed=len(report.failed), requests=report.requests)
        return BatchResult(outcomes, reasons)
