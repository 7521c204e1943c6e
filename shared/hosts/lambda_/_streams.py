"""The Lambda adapters for Kinesis and DynamoDB Streams event source mappings: one adapter,
two record builders (`shared.consumers.kinesis.message_from_kinesis_record`,
`shared.consumers.dynamodb_streams.message_from_dynamodb_record`). Lambda retries from the
lowest failed sequence number, so only that one is reported
(`shared.consumers.streams.stream_batch_item_failures`); DEAD_LETTER records go to the
failure queue in the same document the ECS stream consumer writes
(`shared.consumers.streams.failure_message`) and count as done.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from shared.aws import AwsClients
from shared.consumers import BatchHandler, BatchResult, Message, Outcome
from shared.consumers.dynamodb_streams import message_from_dynamodb_record
from shared.consumers.kinesis import message_from_kinesis_record
from shared.consumers.streams import (
    failure_message,
    send_failure_messages,
    stream_batch_item_failures,
)
from shared.errors import FleetlineError
from shared.hosts._worker import HandlerFactory
from shared.hosts.lambda_._runtime import (
    LambdaHandler,
    LambdaRuntime,
    batch_trigger,
    source_label,
)
from shared.metrics import Counter as Metric
from shared.metrics import consumer as consumer_metrics

__all__ = ["dynamodb_stream_handler", "kinesis_handler"]

_log = structlog.get_logger("shared.hosts.lambda")


async def _send_failures(
    aws: AwsClients, queue_url: str, dead: Sequence[Message], result: BatchResult,
) -> list[str]:
    """Failure messages for `dead` records, as the ECS stream consumer writes them; returns
    the ids SQS accepted. A refused call is logged: its records are reported and retried."""
    sqs = await aws.client("sqs")
    worker = "lambda:" + os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
    accepted: list[str] = []
    for start in range(0, len(dead), 10):  # a SendMessageBatch takes 10
        chunk = dead[start:start + 10]
        bodies = [
            failure_message(m, stream=m.raw.get("eventSourceARN"), shard_id=m.source_name,
                            reason=result.reasons.get(m.id), attempts=m.receive_count,
                            worker=worker)
            for m in chunk
        ]
        try:
            refused = set(await send_failure_messages(sqs, queue_url, bodies))
        except FleetlineError as exc:
            _log.error("failure queue unavailable; records are retried", error=str(exc))
            continue
        accepted.extend(m.id for index, m in enumerate(chunk) if index not in refused)
    return accepted


def _stream_handler(
    to_message: Callable[[Mapping[str, Any]], Message],
    handler: BatchHandler | None,
    setup: HandlerFactory | None,
    failure_queue: str | None,
    runtime: LambdaRuntime | None,
) -> LambdaHandler:
    async def failures(
        rt: LambdaRuntime, aws: AwsClients, messages: list[Message], result: BatchResult
    ) -> list[dict[str, str]]:
        sent: list[str] = []
        dead = [m for m in messages if result.outcomes.get(m.id) is Outcome.DEAD_LETTER]
        if dead and failure_queue:
            url = failure_queue
            if "://" not in url:
                url = rt.resources.get(failure_queue) if failure_queue[:1].isupper() else url
            sent = await _send_failures(aws, url, dead, result)
            consumer_metrics(source_label(dead[0])).count(Metric.DEAD_LETTERED, len(sent))
        return stream_batch_item_failures(messages, result, handled=sent)

    return batch_trigger(to_message, handler=handler, setup=setup, runtime=runtime,
                         failures=failures)


def kinesis_handler(
    handler: BatchHandler | None = None,
    *,
    setup: HandlerFactory | None = None,
    failure_queue: str | None = None,
    runtime: LambdaRuntime | None = None,
) -> LambdaHandler:
    """A Lambda entry point for a Kinesis event source mapping (ReportBatchItemFailures on).

    `failure_queue` (stack output key or queue URL) receives DEAD_LETTER records with shard
    id, sequence number and reason; without it they are reported as failures (the mapping's
    MaximumRetryAttempts and on-failure destination then apply).

    Raises ValueError unless exactly one of handler and setup is given.
    """
    return _stream_handler(message_from_kinesis_record, handler, setup, failure_queue, runtime)


def dynamodb_stream_handler(
    handler: BatchHandler | None = None,
    *,
    setup: HandlerFactory | None = None,
    failure_queue: str | None = None,
    runtime: LambdaRuntime | None = None,
) -> LambdaHandler:
    """A Lambda entry point for a DynamoDB Streams event source mapping; as `kinesis_handler`.

    Raises ValueError unless exactly one of handler and setup is given.
    """
    return _stream_handler(message_from_dynamodb_record, handler, setup, failure_queue, runtime)
