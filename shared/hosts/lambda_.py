"""Lambda adapters: the same `BatchHandler` (and the same async code) that runs in an ECS
worker, behind Lambda's synchronous `handler(event, context)` entry point.

    handler = sqs_handler(setup=lambda aws, resources: Projection(aws, ...).batch_handler())

- `sqs_handler`: an SQS event source mapping (turn on ReportBatchItemFailures). Returns
  `{"batchItemFailures": [...]}` with every message that did not succeed. It also does what
  the mapping cannot: failed messages get the worker's backoff (ChangeMessageVisibilityBatch,
  full jitter by receive count) instead of the queue's fixed visibility timeout, and a
  message the handler dead-letters (or that fails on its last allowed receive) is sent to the
  queue's DLQ with the reason attribute and reported as done. Needs sqs:GetQueueUrl,
  sqs:GetQueueAttributes, sqs:ChangeMessageVisibility and sqs:SendMessage on the DLQ; when a
  call is refused it falls back to plain batchItemFailures.
- `kinesis_handler`, `dynamodb_stream_handler`: stream mappings. Lambda retries from the
  lowest failed sequence number, so only that one is reported. DEAD_LETTER records go to
  `failure_queue` (same document as the ECS stream consumer's) and count as done.
- `eventbridge_handler`: one EventBridge event (async invocation). A RETRY or DEAD_LETTER
  outcome raises `InvocationFailed`, so Lambda's retries and on-failure destination apply.
- `http_api_handler`: API Gateway HTTP API (payload format 2.0) routes to async functions;
  JSON errors, 400 naming the fields of a pydantic validation error, 413 over the body limit.

Every adapter runs its coroutine on one event loop per container, kept in a background
thread (`LambdaRuntime`): the `AwsClients` (connection pools) and the handler built by
`setup` are made once per container and reused by later invocations. A batch that would
outlast the function's timeout is cut one second before it: finished messages keep their
outcome, the rest are reported as failures, so Lambda never retries the whole batch.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import inspect
import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import anyio
import structlog
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import (
    Action,
    Backoff,
    BatchHandler,
    BatchResult,
    Message,
    Outcome,
    SourceKind,
    settle,
    sqs_batch_item_failures,
    stream_batch_item_failures,
)
from shared.consumers._handlers import delivery_control
from shared.consumers._sqs import change_visibility, send_dead_letters
from shared.errors import FleetlineError, InvalidMessageError, PermanentError, RetryableError
from shared.hosts._worker import HandlerFactory, configure_process
from shared.metrics import Counter as Metric
from shared.metrics import consumer as consumer_metrics
from shared.metrics import get_metrics
from shared.tracing import extract, tracer

__all__ = [
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "HttpRoute",
    "InvocationFailed",
    "LambdaRuntime",
    "dynamodb_stream_handler",
    "eventbridge_handler",
    "http_api_handler",
    "kinesis_handler",
    "message_from_dynamodb_record",
    "message_from_eventbridge",
    "message_from_kinesis_record",
    "message_from_sqs_record",
    "sqs_handler",
]

T = TypeVar("T")
LambdaHandler = Callable[[Any, Any], Any]

_log = structlog.get_logger("shared.hosts.lambda")
_SAFETY_SECONDS: Final = 1.0
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576
_DEFAULT_BACKOFF: Final = Backoff()


# --------------------------------------------------------------------------- runtime


class LambdaRuntime:
    """One per container: an event loop in a daemon thread, one `AwsClients` entered on it,
    and the handlers built by `setup` functions, all reused across invocations.

    `run(fn)` may be called from any thread (Lambda's, or a local runner's worker threads);
    calls are serialised onto the one loop. Logging and tracing are configured on first use
    when running inside Lambda (AWS_LAMBDA_FUNCTION_NAME is set).
    """

    def __init__(self, *, resources: Resources | None = None) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aws: AwsClients | None = None
        self._resources = resources
        self._built: dict[int, Any] = {}
        self.cache: dict[str, Any] = {}  # per-container lookups (queue URLs, DLQs)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
                if function:
                    configure_process(function)
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="fleetline-lambda-loop", daemon=True
                )
                thread.start()
                self._loop = loop
                # Lambda freezes a container with its pools open; a local process exits, and
                # open aiohttp sessions would each log "Unclosed client session" (an error).
                atexit.register(self.close)
            return self._loop

    def run(self, fn: Callable[[AwsClients], Coroutine[Any, Any, T]]) -> T:
        """Run `fn(aws)` on the container's loop and return its result (or raise)."""
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._call(fn), loop).result()

    async def _call(self, fn: Callable[[AwsClients], Coroutine[Any, Any, T]]) -> T:
        if self._aws is None:
            aws = AwsClients()
            await aws.__aenter__()
            self._aws = aws
        return await fn(self._aws)

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            self._resources = Resources.from_environ()
        return self._resources

    async def built(self, key: object, make: Callable[[], Awaitable[T] | T]) -> T:
        """`make()` once per container for `key` (a setup function)."""
        ident = id(key)
        if ident not in self._built:
            value = make()
            if inspect.isawaitable(value):
                value = await value
            self._built[ident] = value
        return self._built[ident]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the clients and stop the loop (tests, and at process exit: Lambda just
        freezes the container)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        aws, self._aws = self._aws, None
        if aws is not None:
            closing = asyncio.run_coroutine_threadsafe(aws.__aexit__(None, None, None), loop)
            closing.result(timeout=_CLOSE_TIMEOUT_SECONDS)
        loop.call_soon_threadsafe(loop.stop)


_CLOSE_TIMEOUT_SECONDS: Final = 5.0  # closing the clients at exit never hangs the exit

_RUNTIME = LambdaRuntime()


def _remaining(context: Any) -> float | None:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if getter is None:
        return None
    return max(0.0, float(getter()) / 1000.0 - _SAFETY_SECONDS)


async def _batch_handler(
    runtime: LambdaRuntime, aws: AwsClients, handler: BatchHandler | None,
    setup: HandlerFactory | None,
) -> BatchHandler:
    if handler is not None:
        return handler
    assert setup is not None
    factory = setup
    built: BatchHandler = await runtime.built(
        factory, lambda: factory(aws, runtime.resources)
    )
    return built


def _check_sources(handler: object, setup: object) -> None:
    if (handler is None) == (setup is None):
        raise ValueError("give exactly one of handler and setup=")


class _Progress:
    """Early outcomes, in case the function's deadline cuts the batch short."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.reasons: dict[str, str] = {}
        self.delays: dict[str, float] = {}

    async def extend(self, message: Message, seconds: float | None = None) -> None:
        return None  # the mapping owns visibility in Lambda; the deadline bounds the work

    def completed(
        self, message: Message, outcome: Outcome, reason: str | None, delay: float | None
    ) -> None:
        self.outcomes[message.id] = outcome
        if reason is not None:
            self.reasons[message.id] = reason
        if delay is not None:
            self.delays[message.id] = delay


def _source_label(message: Message) -> str:
    """The metrics name of an event source: queue, stream or table name from its ARN."""
    arn = str(message.raw.get("eventSourceARN") or message.source_name)
    if ":table/" in arn:
        return arn.split(":table/", 1)[1].split("/", 1)[0]
    return arn.rsplit(":", 1)[-1].rsplit("/", 1)[-1] or "lambda"


async def _run_batch(
    handler: BatchHandler, messages: Sequence[Message], deadline: float | None
) -> BatchResult:
    """`_run_once`, with the consumer metrics recorded (the entry points flush them: one EMF
    line per source per invocation, which Lambda's log stream carries to CloudWatch)."""
    started = time.perf_counter()
    result = await _run_once(handler, messages, deadline)
    metrics = consumer_metrics(_source_label(messages[0]))
    metrics.count(Metric.RECEIVED, len(messages))
    metrics.observe_batch_size(len(messages))
    metrics.observe_latency(time.perf_counter() - started)
    arrivals = [m.approximate_arrival for m in messages if m.approximate_arrival is not None]
    if arrivals:
        metrics.observe_lag(max(0.0, time.time() - min(arrivals)))
    for m in messages:
        outcome = result.outcomes.get(m.id)
        if outcome is Outcome.SUCCEEDED:
            metrics.count(Metric.SUCCEEDED)
        elif outcome is Outcome.DUPLICATE:
            metrics.count(Metric.DUPLICATES_SKIPPED)
        elif outcome is not None:
            metrics.count(Metric.FAILED)
            if outcome is Outcome.RETRY:
                metrics.count(Metric.RETRIED)
    return result


async def _run_once(
    handler: BatchHandler, messages: Sequence[Message], deadline: float | None
) -> BatchResult:
    """The handler's result; a handler error retries the batch; at the deadline, what
    finished keeps its outcome and the rest get none (reported as failures)."""
    progress = _Progress()
    result: BatchResult | None = None
    try:
        with anyio.move_on_after(deadline if deadline is not None else float("inf")):
            with delivery_control(progress):
                result = await handler(messages)
    except Exception as exc:
        _log.exception("batch handler raised; the batch is retried", messages=len(messages))
        reason = f"{type(exc).__name__}: {exc}"
        return BatchResult({m.id: Outcome.RETRY for m in messages},
                           {m.id: reason for m in messages})
    if result is None:
        _log.warning("function deadline reached; unfinished messages reported as failures",
                     finished=len(progress.outcomes), messages=len(messages))
        return BatchResult(progress.outcomes, progress.reasons, progress.delays)
    return result


def _log_failures(messages: Sequence[Message], result: BatchResult) -> None:
    for m in messages:
        outcome = result.outcomes.get(m.id)
        if outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE):
            continue
        _log.warning("message failed", message_id=m.id, receive_count=m.receive_count,
                     outcome=outcome.value if outcome else "not attempted",
                     error=result.reasons.get(m.id), source=m.source.value)


# --------------------------------------------------------------------------- SQS


def message_from_sqs_record(record: Mapping[str, Any]) -> Message:
    """A `Message` from one record of an SQS event source mapping event."""
    system = record.get("attributes") or {}
    attributes: dict[str, str] = {}
    for name, value in (record.get("messageAttributes") or {}).items():
        text = value.get("stringValue")
        if text is not None:
            attributes[name] = str(text)
    if "AWSTraceHeader" in system:
        attributes.setdefault("AWSTraceHeader", str(system["AWSTraceHeader"]))
    sent = system.get("SentTimestamp")
    # `raw` in the API's shape, so a DLQ copy keeps the attributes and trace header.
    raw = {
        **record,
        "MessageAttributes": {
            name: {"DataType": v.get("dataType", "String"), "StringValue": v["stringValue"]}
            for name, v in (record.get("messageAttributes") or {}).items()
            if v.get("stringValue") is not None
        },
        "Attributes": dict(system),
    }
    return Message(
        id=str(record["messageId"]),
        body=str(record.get("body", "")),
        source=SourceKind.SQS,
        source_name=str(record.get("eventSourceARN", "")),
        attributes=attributes,
        receive_count=int(system.get("ApproximateReceiveCount", 1)),
        group_id=system.get("MessageGroupId"),
        sequence=system.get("SequenceNumber"),
        receipt=record.get("receiptHandle"),
        approximate_arrival=int(sent) / 1000.0 if sent is not None else None,
        raw=raw,
    )


@dataclass(frozen=True)
class _QueueInfo:
    url: str | None
    dead_letter_url: str | None
    max_receive_count: int | None


async def _queue_info(runtime: LambdaRuntime, aws: AwsClients, arn: str) -> _QueueInfo:
    key = f"sqs:{arn}"
    cached = runtime.cache.get(key)
    if isinstance(cached, _QueueInfo):
        return cached
    info = _QueueInfo(None, None, None)
    parts = arn.split(":")
    if len(parts) >= 6:
        sqs = await aws.client("sqs")
        try:
            with aws_errors():
                url = str((await sqs.get_queue_url(
                    QueueName=parts[5], QueueOwnerAWSAccountId=parts[4]))["QueueUrl"])
                attrs = (await sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["RedrivePolicy"]))["Attributes"]
            info = _QueueInfo(url, None, None)
            policy = json.loads(attrs.get("RedrivePolicy") or "{}")
            target = str(policy.get("deadLetterTargetArn", ""))
            if target.count(":") >= 5:
                tparts = target.split(":")
                with aws_errors():
                    dlq = str((await sqs.get_queue_url(
                        QueueName=tparts[5], QueueOwnerAWSAccountId=tparts[4]))["QueueUrl"])
                info = _QueueInfo(url, dlq, int(policy.get("maxReceiveCount", 0)) or None)
        except FleetlineError as exc:
            _log.warning("queue lookup failed; plain batchItemFailures", queue=arn,
                         error=str(exc))
    runtime.cache[key] = info
    return info


def sqs_handler(
    handler: BatchHandler | None = None,
    *,
    setup: HandlerFactory | None = None,
    backoff: Backoff | None = _DEFAULT_BACKOFF,
    dead_letter: bool = True,
    runtime: LambdaRuntime | None = None,
    rng: random.Random | None = None,
) -> LambdaHandler:
    """A Lambda entry point for an SQS event source mapping.

    Exactly one of `handler` (a BatchHandler) and `setup` (built once per container from
    the container's AwsClients and Resources). `backoff` (default `Backoff()`; None leaves
    failed messages to the queue's visibility timeout) delays failed messages by changing
    their visibility; `dead_letter` sends what the handler dead-letters to the queue's DLQ
    with the reason.

    Raises ValueError unless exactly one of handler and setup is given.
    """
    _check_sources(handler, setup)
    rt = runtime or _RUNTIME
    chosen_backoff = backoff if backoff is not None else _DEFAULT_BACKOFF
    use_backoff = backoff is not None
    jitter = rng or random.Random()

    async def invoke(aws: AwsClients, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        messages = [message_from_sqs_record(r) for r in event.get("Records") or []]
        if not messages:
            return {"batchItemFailures": []}
        batch = await _batch_handler(rt, aws, handler, setup)
        result = await _run_batch(batch, messages, _remaining(context))
        _log_failures(messages, result)
        if not (use_backoff or dead_letter) or all(
            result.outcomes.get(m.id) in (Outcome.SUCCEEDED, Outcome.DUPLICATE)
            for m in messages
        ):
            return {"batchItemFailures": sqs_batch_item_failures(messages, result)}
        info = await _queue_info(rt, aws, messages[0].source_name)
        settlement = settle(
            messages, result, backoff=chosen_backoff, rng=jitter,
            dead_letter_available=dead_letter and info.dead_letter_url is not None,
            max_receive_count=info.max_receive_count,
        )
        handled: list[str] = []
        sqs = await aws.client("sqs")
        dead = settlement.of(Action.DEAD_LETTER)
        if dead and info.url and info.dead_letter_url:
            sent, _ = await send_dead_letters(
                sqs, dead, queue_url=info.url, dead_letter_queue_url=info.dead_letter_url,
                log=_log,
            )
            handled = [m.id for m in sent]
            consumer_metrics(_source_label(sent[0]) if sent else "sqs").count(
                Metric.DEAD_LETTERED, len(sent))
            for m in sent:
                _log.error("message dead-lettered", message_id=m.id,
                           receive_count=m.receive_count, error=result.reasons.get(m.id),
                           dead_letter_queue=info.dead_letter_url)
        if use_backoff and info.url:
            changes = [(d.message, d.visibility or 0) for d in settlement.dispositions
                       if d.action in (Action.RETRY, Action.RELEASE)]
            if changes:
                await change_visibility(sqs, info.url, changes, purpose="retry", log=_log)
        return {"batchItemFailures": sqs_batch_item_failures(messages, result, handled=handled)}

    def entry(event: Any, context: Any) -> dict[str, Any]:
        return rt.run(lambda aws: _flushing(invoke(aws, event, context)))

    return entry


async def _flushing(work: Awaitable[T]) -> T:
    try:
        return await work
    finally:
        get_metrics().flush()


# --------------------------------------------------------------------------- streams


def _shard_of(record: Mapping[str, Any]) -> str:
    return str(record.get("eventID", "")).split(":", 1)[0]


def message_from_kinesis_record(record: Mapping[str, Any]) -> Message:
    """A `Message` from one record of a Kinesis event source mapping event; same shape as
    the ECS Kinesis consumer's (UTF-8 body, or base64 with `content-transfer-encoding`)."""
    kinesis = record["kinesis"]
    data = base64.b64decode(kinesis.get("data", ""))
    attributes: dict[str, str] = {}
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        body = base64.b64encode(data).decode("ascii")
        attributes["content-transfer-encoding"] = "base64"
    sequence = str(kinesis["sequenceNumber"])
    partition_key = str(kinesis.get("partitionKey", ""))
    shard = _shard_of(record)
    arrival = kinesis.get("approximateArrivalTimestamp")
    return Message(
        id=sequence,
        body=body,
        source=SourceKind.KINESIS,
        source_name=shard,
        attributes=attributes,
        group_id=partition_key,
        sequence=sequence,
        approximate_arrival=float(arrival) if arrival is not None else None,
        raw={**record, "stream": record.get("eventSourceARN"), "shard_id": shard,
             "partition_key": partition_key, "sequence_number": sequence},
    )


def _key_text(value: Mapping[str, Any]) -> str:
    for kind in ("S", "N", "B"):
        if kind in value:
            return str(value[kind])
    return json.dumps(value, sort_keys=True)


def message_from_dynamodb_record(record: Mapping[str, Any]) -> Message:
    """A `Message` from one record of a DynamoDB Streams mapping event; the body is the
    record as JSON, as the ECS DynamoDB Streams consumer makes it."""
    change = record.get("dynamodb") or {}
    sequence = str(change["SequenceNumber"])
    keys: Mapping[str, Any] = change.get("Keys") or {}
    created = change.get("ApproximateCreationDateTime")
    return Message(
        id=sequence,
        body=json.dumps(record, separators=(",", ":"), default=str),
        source=SourceKind.DYNAMODB_STREAM,
        source_name=_shard_of(record) or str(record.get("eventSourceARN", "")),
        attributes={"eventName": str(record.get("eventName", ""))},
        group_id="|".join(_key_text(keys[name]) for name in sorted(keys)) or None,
        sequence=sequence,
        approximate_arrival=float(created) if isinstance(created, (int, float)) else None,
        raw=record,
    )


async def _send_failures(
    aws: AwsClients, queue_url: str, dead: Sequence[Message], result: BatchResult,
) -> list[str]:
    """Failure documents for `dead` records, as the ECS stream consumer writes them; returns
    the ids SQS accepted."""
    sqs = await aws.client("sqs")
    accepted: list[str] = []
    for start in range(0, len(dead), 10):
        chunk = dead[start:start + 10]
        entries = []
        for index, m in enumerate(chunk):
            document = {
                "source": m.source.value,
                "stream": m.raw.get("eventSourceARN"),
                "shard_id": m.source_name,
                "sequence_number": m.sequence,
                "partition_key": m.group_id,
                "reason": result.reasons.get(m.id),
                "attempts": m.receive_count,
                "approximate_arrival": m.approximate_arrival,
                "worker": "lambda:" + os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local"),
                "body": m.body[:200_000],
                "body_truncated": len(m.body) > 200_000,
            }
            entries.append({"Id": str(index),
                            "MessageBody": json.dumps(document, separators=(",", ":"))})
        try:
            with aws_errors():
                response = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except FleetlineError as exc:
            _log.error("failure queue unavailable; records are retried", error=str(exc))
            continue
        accepted.extend(chunk[int(s["Id"])].id for s in response.get("Successful", []))
    return accepted


def _stream_handler(
    to_message: Callable[[Mapping[str, Any]], Message],
    handler: BatchHandler | None,
    setup: HandlerFactory | None,
    failure_queue: str | None,
    runtime: LambdaRuntime | None,
) -> LambdaHandler:
    _check_sources(handler, setup)
    rt = runtime or _RUNTIME

    async def invoke(aws: AwsClients, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        messages = [to_message(r) for r in event.get("Records") or []]
        if not messages:
            return {"batchItemFailures": []}
        batch = await _batch_handler(rt, aws, handler, setup)
        result = await _run_batch(batch, messages, _remaining(context))
        _log_failures(messages, result)
        handled: list[str] = []
        dead = [m for m in messages if result.outcomes.get(m.id) is Outcome.DEAD_LETTER]
        if dead and failure_queue:
            url = failure_queue
            if "://" not in url:
                url = rt.resources.get(failure_queue) if failure_queue[:1].isupper() else url
            handled = await _send_failures(aws, url, dead, result)
            consumer_metrics(_source_label(dead[0])).count(Metric.DEAD_LETTERED, len(handled))
        return {"batchItemFailures": stream_batch_item_failures(messages, result,
                                                                handled=handled)}

    def entry(event: Any, context: Any) -> dict[str, Any]:
        return rt.run(lambda aws: _flushing(invoke(aws, event, context)))

    return entry


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


# --------------------------------------------------------------------------- EventBridge


class InvocationFailed(FleetlineError):
    """Raised out of an EventBridge-triggered function so Lambda retries it (asynchronous
    invocation) and, after its retries, sends it to the on-failure destination."""

    def __init__(self, reason: str, *, outcome: Outcome) -> None:
        super().__init__(reason)
        self.outcome = outcome


def message_from_eventbridge(event: Mapping[str, Any]) -> Message:
    """A `Message` from an EventBridge event (the envelope is in `detail`)."""
    return Message(
        id=str(event.get("id", "")),
        body=json.dumps(event, separators=(",", ":"), default=str),
        source=SourceKind.EVENTBRIDGE,
        source_name=str(event.get("source", "")),
        attributes={"detail-type": str(event.get("detail-type", ""))},
        raw=event,
    )


def eventbridge_handler(
    handler: BatchHandler | None = None,
    *,
    setup: HandlerFactory | None = None,
    runtime: LambdaRuntime | None = None,
) -> LambdaHandler:
    """A Lambda entry point for an EventBridge rule target. Returns None on SUCCEEDED or
    DUPLICATE; raises `InvocationFailed` on RETRY and DEAD_LETTER.

    Raises ValueError unless exactly one of handler and setup is given.
    """
    _check_sources(handler, setup)
    rt = runtime or _RUNTIME

    async def invoke(aws: AwsClients, event: Mapping[str, Any], context: Any) -> None:
        message = message_from_eventbridge(event)
        batch = await _batch_handler(rt, aws, handler, setup)
        result = await _run_batch(batch, [message], _remaining(context))
        outcome = result.outcomes.get(message.id, Outcome.RETRY)
        if outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE):
            return
        reason = result.reasons.get(message.id, "not finished")
        _log.warning("event failed", event_id=message.id, outcome=outcome.value, error=reason)
        raise InvocationFailed(reason, outcome=outcome)

    def entry(event: Any, context: Any) -> None:
        rt.run(lambda aws: _flushing(invoke(aws, event, context)))

    return entry


# --------------------------------------------------------------------------- HTTP API


class HttpError(FleetlineError):
    """Raise from a route to answer `status` with `{"message": ..., "field": ...}`."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.details = dict(details or {})


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, kw_only=True)
class HttpRequest:
    """An HTTP API request (payload format 2.0), with the container's clients."""

    method: str
    path: str
    route_key: str
    path_parameters: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    aws: AwsClients
    resources: Resources
    raw: Mapping[str, Any] = field(default_factory=dict)

    def json(self, model: type[M]) -> M:
        """The body validated as `model`.

        Raises:
            HttpError: 400 when the body is not JSON (field "body"), or when it fails the
                model (field: the first bad field's dotted path; `details.errors` lists all).
        """
        try:
            document = json.loads(self.body or b"null")
        except ValueError:
            raise HttpError(400, "body is not valid JSON", field="body") from None
        try:
            return model.model_validate(document)
        except ValidationError as exc:
            raise _validation_error(exc) from None


@dataclass(frozen=True)
class HttpResponse:
    """A route's answer. `body`: a JSON-able value or pydantic model (None: empty body)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


HttpRoute = Callable[[HttpRequest], Awaitable[Any]]
"""`async def route(request) -> HttpResponse | JSON-able value | pydantic model`."""


def _validation_error(exc: ValidationError) -> HttpError:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return HttpError(400, f"{first['field']}: {first['message']}", field=first["field"],
                     details={"errors": errors})


def _json_response(status: int, body: Any, headers: Mapping[str, str] | None = None
                   ) -> dict[str, Any]:
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": "" if body is None else json.dumps(body, separators=(",", ":"), default=str),
        "isBase64Encoded": False,
    }


def _error_response(error: HttpError) -> dict[str, Any]:
    body: dict[str, Any] = {"message": error.message}
    if error.field is not None:
        body["field"] = error.field
    body.update(error.details)
    return _json_response(error.status, body)


def http_api_handler(
    routes: Mapping[str, HttpRoute] | None = None,
    *,
    setup: Callable[[AwsClients, Resources], Any] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    runtime: LambdaRuntime | None = None,
) -> LambdaHandler:
    """A Lambda entry point for API Gateway HTTP API routes (payload format 2.0).

    `routes` maps the event's `routeKey` ("POST /orders", "GET /orders/{id}", "$default")
    to an async function; or `setup(aws, resources)` returns that mapping once per container.
    Answers: the route's result as JSON (200 unless an `HttpResponse` says otherwise);
    413 when the body exceeds `max_body_bytes` (checked before parsing); 400 naming the
    field for invalid JSON, pydantic validation errors and `InvalidMessageError`; an
    `HttpError`'s status; 404 for an unknown route; 503 for a retryable failure; 500
    otherwise (logged with its traceback; the client sees no details).

    Raises ValueError unless exactly one of routes and setup is given, or when
    `max_body_bytes` < 1.
    """
    _check_sources(routes, setup)
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
    rt = runtime or _RUNTIME

    async def table(aws: AwsClients) -> Mapping[str, HttpRoute]:
        if routes is not None:
            return routes
        assert setup is not None
        factory = setup
        built: Mapping[str, HttpRoute] = await rt.built(
            factory, lambda: factory(aws, rt.resources))
        return built

    async def invoke(aws: AwsClients, event: Mapping[str, Any]) -> dict[str, Any]:
        route_key = str(event.get("routeKey", "$default"))
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        raw_body = event.get("body") or ""
        body = (base64.b64decode(raw_body) if event.get("isBase64Encoded")
                else str(raw_body).encode())
        http = (event.get("requestContext") or {}).get("http") or {}
        with tracer("shared.hosts").start_as_current_span(
            route_key, context=extract(headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": str(http.get("method", "")),
                        "http.route": route_key},
        ) as span:
            answer = await respond(aws, event, route_key, headers, body, http)
            span.set_attribute("http.response.status_code", int(answer["statusCode"]))
            return answer

    async def respond(aws: AwsClients, event: Mapping[str, Any], route_key: str,
                      headers: dict[str, str], body: bytes, http: Mapping[str, Any]
                      ) -> dict[str, Any]:
        if len(body) > max_body_bytes:
            return _error_response(HttpError(
                413, f"body is {len(body)} bytes; the limit is {max_body_bytes}",
                field="body", details={"limit": max_body_bytes}))
        known = await table(aws)
        route = known.get(route_key) or known.get("$default")
        if route is None:
            return _error_response(HttpError(404, f"no route for {route_key}"))
        request = HttpRequest(
            method=str(http.get("method", route_key.split(" ", 1)[0])),
            path=str(http.get("path", event.get("rawPath", ""))),
            route_key=route_key,
            path_parameters=dict(event.get("pathParameters") or {}),
            query=dict(event.get("queryStringParameters") or {}),
            headers=headers,
            body=body,
            aws=aws,
            resources=rt.resources,
            raw=event,
        )
        try:
            answer = await route(request)
        except HttpError as exc:
            return _error_response(exc)
        except ValidationError as exc:
            return _error_response(_validation_error(exc))
        except InvalidMessageError as exc:
            return _error_response(HttpError(400, str(exc), field=exc.field))
        except RetryableError as exc:
            _log.warning("route failed; retryable", route=route_key, error=str(exc))
            return _error_response(HttpError(503, "Service Unavailable"))
        except PermanentError as exc:
            _log.warning("route refused", route=route_key, error=str(exc))
            return _error_response(HttpError(400, str(exc)))
        except Exception:
            _log.exception("route failed", route=route_key)
            return _error_response(HttpError(500, "Internal Server Error"))
        if isinstance(answer, HttpResponse):
            return _json_response(answer.status, answer.body, answer.headers)
        return _json_response(200, answer)

    def entry(event: Any, context: Any) -> dict[str, Any]:
        return rt.run(lambda aws: invoke(aws, event))

    return entry
