"""The failure queue of a stream: one SQS message per record that cannot be processed, the
same document whichever host gave up on it (the ECS `StreamConsumer`, or the Lambda Kinesis /
DynamoDB Streams adapters in `shared.hosts.lambda_`):

    {"source", "stream", "application" (ECS only: the consumer group), "shard_id",
     "sequence_number", "partition_key", "reason", "attempts", "approximate_arrival",
     "worker", "body", "body_truncated"}

A message is at most `FAILURE_MESSAGE_BYTES` (the record's body is cut to fit), so that a
SendMessageBatch of 10 stays under SQS's 256 KiB; the sequence number finds the full record
in the stream for as long as the stream retains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from shared.aws import AwsClient, aws_errors
from shared.consumers._message import Message
from shared.consumers.streams._decisions import fit_failure_message

__all__ = ["FAILURE_MESSAGE_BYTES", "failure_message", "send_failure_messages"]

FAILURE_MESSAGE_BYTES: Final = 25_000
_MAX_REASON: Final = 2_000  # characters


def failure_message(
    message: Message,
    *,
    stream: str | None,
    shard_id: str,
    reason: str | None,
    attempts: int,
    worker: str,
    application: str | None = None,
) -> str:
    """The failure-queue message body for `message` (JSON text, at most
    `FAILURE_MESSAGE_BYTES` bytes). `application` is left out when None."""
    document: dict[str, Any] = {"source": str(message.source), "stream": stream}
    if application is not None:
        document["application"] = application
    document.update(
        shard_id=shard_id,
        sequence_number=message.sequence,
        partition_key=message.group_id,
        reason=None if reason is None else reason[:_MAX_REASON],
        attempts=attempts,
        approximate_arrival=message.approximate_arrival,
        worker=worker,
        body=message.body,
    )
    return fit_failure_message(document, max_bytes=FAILURE_MESSAGE_BYTES)


async def send_failure_messages(
    sqs: AwsClient, queue_url: str, bodies: Sequence[str]
) -> list[int]:
    """One SendMessageBatch of up to 10 failure messages; returns the indexes of the bodies
    SQS did not accept.

    Raises:
        ValueError: more than 10 bodies.
        AwsRequestError, AwsUnavailableError: the call failed (nothing was sent).
    """
    if len(bodies) > 10:
        raise ValueError(f"a SendMessageBatch takes at most 10 entries, got {len(bodies)}")
    if not bodies:
        return []
    entries = [{"Id": str(index), "MessageBody": body} for index, body in enumerate(bodies)]
    with aws_errors():
        response = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    return [int(entry["Id"]) for entry in response.get("Failed", [])]
