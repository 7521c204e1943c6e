"""What every consumer hands to handlers, whatever the source: SQS, Kinesis, DynamoDB Streams,
or a Lambda event. One shape, so one handler serves every host."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DONE",
    "BatchHandler",
    "BatchResult",
    "Message",
    "Outcome",
    "SourceKind",
    "destination_name",
    "message_span_attributes",
]


class SourceKind(enum.StrEnum):
    SQS = "sqs"
    KINESIS = "kinesis"
    DYNAMODB_STREAM = "dynamodb-stream"
    EVENTBRIDGE = "eventbridge"
    SNS = "sns"


@dataclass(frozen=True, kw_only=True)
class Message:
    """One delivery of one record.

    `id` is the transport's id (SQS MessageId, Kinesis/DynamoDB sequence number); the
    *event* id used for deduplication lives in the envelope inside `body`.
    """

    id: str
    body: str
    source: SourceKind
    source_name: str  # queue URL, stream ARN, shard id ...
    attributes: Mapping[str, str] = field(default_factory=dict)  # message attributes / headers
    receive_count: int = 1
    group_id: str | None = None  # FIFO MessageGroupId, Kinesis partition key
    sequence: str | None = None  # Kinesis / DynamoDB Streams sequence number
    receipt: str | None = None  # SQS receipt handle
    approximate_arrival: float | None = None  # epoch seconds, for lag
    raw: Mapping[str, Any] = field(default_factory=dict)


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"  # effect applied: delete / checkpoint past it
    DUPLICATE = "duplicate"  # already applied before: delete, count the skip
    RETRY = "retry"  # transient failure: make visible later with backoff
    DEAD_LETTER = "dead-letter"  # permanent failure: to the DLQ / failure queue with reason


DONE: frozenset[Outcome] = frozenset({Outcome.SUCCEEDED, Outcome.DUPLICATE})
"""The outcomes after which a message is finished: deleted, checkpointed past, not reported."""


@dataclass(frozen=True)
class BatchResult:
    """Per-message outcome of a batch, by `Message.id`. A message missing from `outcomes`
    counts as RETRY; `reasons` holds the error text for RETRY / DEAD_LETTER.

    A message missing from `outcomes` was not attempted (a FIFO group stopped before it, or
    the handler was cancelled): it is released at once (SQS visibility 0), not backed off.
    `delays` optionally holds, for RETRY messages, the handler's "retry no sooner than"
    hint in seconds (`RetryLater(delay=...)`); without one the consumer's backoff decides.
    """

    outcomes: Mapping[str, Outcome]
    reasons: Mapping[str, str] = field(default_factory=dict)
    delays: Mapping[str, float] = field(default_factory=dict)


BatchHandler = Callable[[Sequence[Message]], Awaitable[BatchResult]]


def destination_name(source_name: str) -> str:
    """The name of a queue or stream from its URL or ARN (OpenTelemetry's
    `messaging.destination.name` is the name, not the address): `orders-tasks` from
    `https://sqs.../123/orders-tasks` or `arn:aws:sqs:...:orders-tasks`, `telemetry` from
    `arn:aws:kinesis:...:stream/telemetry`, a table's stream ARN to the table's name."""
    name = source_name.rstrip("/")
    if name.startswith("arn:") and "/stream/" in name:  # a DynamoDB table's stream
        return name.split(":table/", 1)[-1].split("/stream/", 1)[0]
    return name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


_SYSTEMS = {"sqs": "aws_sqs", "kinesis": "aws_kinesis", "dynamodb-stream": "aws_dynamodb",
            "sns": "aws_sns", "eventbridge": "aws_eventbridge"}


def message_span_attributes(message: Message) -> dict[str, Any]:
    """The attributes of the CONSUMER span of one message (messaging semantic
    conventions)."""
    # Messaging semantic conventions (1.27+): the operation's type and the system's name for
    # it; the destination by name.
    attributes: dict[str, Any] = {
        "messaging.system": _SYSTEMS.get(message.source.value, message.source.value),
        "messaging.message.id": message.id,
        "messaging.destination.name": destination_name(message.source_name),
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    }
    if message.group_id is not None:
        attributes["messaging.message.group_id"] = message.group_id
    return attributes
