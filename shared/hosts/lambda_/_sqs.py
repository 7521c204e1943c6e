"""The Lambda adapter for an SQS event source mapping: records -> `Message`s
(`shared.consumers.sqs.message_from_sqs_record`), the batch run by the runtime, then the same
settling as the ECS poller (`shared.consumers.sqs.settle`) for what the mapping cannot do
itself: backoff delays and DLQ copies with reasons.
"""

from __future__ import annotations

import random
from typing import Final

import structlog

from shared.aws import AwsClients
from shared.consumers import Backoff, BatchHandler, BatchResult, Message, Outcome
from shared.consumers.sqs import (
    Action,
    QueueDescription,
    change_visibility,
    describe_queue,
    message_from_sqs_record,
    queue_url,
    send_dead_letters,
    settle,
    sqs_batch_item_failures,
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

__all__ = ["sqs_handler"]

_log = structlog.get_logger("shared.hosts.lambda")
_DEFAULT_BACKOFF: Final = Backoff()
_NOT_FOUND: Final = QueueDescription(url="", visibility_timeout=0, fifo=False,
                                     max_receive_count=None, dead_letter_queue_url=None)


async def _queue(runtime: LambdaRuntime, aws: AwsClients, arn: str) -> QueueDescription:
    """The event source queue (URL, redrive policy, DLQ URL), looked up once per container.
    A refused lookup is logged and remembered as `_NOT_FOUND` (url ""): the adapter then
    falls back to plain batchItemFailures."""
    key = f"sqs:{arn}"
    cached = runtime.cache.get(key)
    if isinstance(cached, QueueDescription):
        return cached
    found = _NOT_FOUND
    try:
        found = await describe_queue(aws, await queue_url(aws, arn), log=_log)
    except FleetlineError as exc:
        _log.warning("queue lookup failed; plain batchItemFailures", queue=arn, error=str(exc))
    runtime.cache[key] = found
    return found


def sqs_handler(
    handler: BatchHandler | None = None,
    *,
    setup: HandlerFactory | None = None,
    backoff: Backoff | None = _DEFAULT_BACKOFF,
    dead_letter: bool = True,
    runtime: LambdaRuntime | None = None,
    rng: random.Random | None = None,
) -> LambdaHandler:
    """A Lambda entry point for an SQS event source mapping (turn on ReportBatchItemFailures).

    Exactly one of `handler` (a BatchHandler) and `setup` (built once per container from
    the container's AwsClients and Resources). Returns `{"batchItemFailures": [...]}` with
    every message that did not succeed. `backoff` (default `Backoff()`; None leaves failed
    messages to the queue's visibility timeout) delays failed messages by changing their
    visibility; `dead_letter` sends what the handler dead-letters (or what fails on its last
    allowed receive) to the queue's DLQ with the reason, and reports it as done. Needs
    sqs:GetQueueUrl, sqs:GetQueueAttributes, sqs:ChangeMessageVisibility and
    sqs:SendMessage on the DLQ; when a lookup is refused it falls back to plain
    batchItemFailures.

    Raises ValueError unless exactly one of handler and setup is given.
    """
    chosen_backoff = backoff if backoff is not None else _DEFAULT_BACKOFF
    use_backoff = backoff is not None
    jitter = rng or random.Random()

    async def failures(
        rt: LambdaRuntime, aws: AwsClients, messages: list[Message], result: BatchResult
    ) -> list[dict[str, str]]:
        if not (use_backoff or dead_letter) or all(
            result.outcomes.get(m.id) in (Outcome.SUCCEEDED, Outcome.DUPLICATE)
            for m in messages
        ):
            return sqs_batch_item_failures(messages, result)
        queue = await _queue(rt, aws, messages[0].source_name)
        # Only with its DLQ known is the redrive's maxReceiveCount of use here: without one,
        # what fails on its last receive is reported and the redrive moves it.
        dead_letter_url = queue.dead_letter_queue_url
        settlement = settle(
            messages, result, backoff=chosen_backoff, rng=jitter,
            dead_letter_available=dead_letter and dead_letter_url is not None,
            max_receive_count=queue.max_receive_count if dead_letter_url else None,
        )
        sent_ids: list[str] = []
        sqs = await aws.client("sqs")
        dead = settlement.of(Action.DEAD_LETTER)
        if dead and queue.url and dead_letter_url:
            sent, _ = await send_dead_letters(
                sqs, dead, queue_url=queue.url, dead_letter_queue_url=dead_letter_url, log=_log,
            )
            sent_ids = [m.id for m in sent]
            consumer_metrics(source_label(sent[0]) if sent else "sqs").count(
                Metric.DEAD_LETTERED, len(sent))
            for m in sent:
                _log.error("message dead-lettered", message_id=m.id,
                           receive_count=m.receive_count, error=result.reasons.get(m.id),
                           dead_letter_queue=dead_letter_url)
        if use_backoff and queue.url:
            changes = [(d.message, d.visibility or 0) for d in settlement.dispositions
                       if d.action in (Action.RETRY, Action.RELEASE)]
            if changes:
                await change_visibility(sqs, queue.url, changes, purpose="retry", log=_log)
        return sqs_batch_item_failures(messages, result, handled=sent_ids)

    return batch_trigger(message_from_sqs_record, handler=handler, setup=setup,
                         runtime=runtime, failures=failures)
