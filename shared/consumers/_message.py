"""What every consumer hands to handlers, whatever the source: SQS, Kinesis, DynamoDB Streams,
or a Lambda event. One shape, so one handler serves every host."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DONE", "BatchHandler", "BatchResult", "Message", "Outcome", "SourceKind"]


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
