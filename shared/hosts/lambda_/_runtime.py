"""The Lambda runtime every adapter shares: one event loop per container in a daemon thread
(`LambdaRuntime`), the container's `AwsClients` and the handlers built by `setup` functions,
and the steps every batch trigger takes (build the handler once, run the batch within the
function's deadline, record the consumer metrics, log the failures, flush the metrics).

A batch that would outlast the function's timeout is cut one second before it: finished
messages keep their outcome (`shared.consumers.BatchProgress`), the rest get none and are
reported as failures, so Lambda never retries the whole batch.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, TypeVar

import anyio
import structlog

from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import (
    BatchHandler,
    BatchProgress,
    BatchResult,
    Message,
    Outcome,
    delivery_control,
)
from shared.hosts._worker import HandlerFactory, configure_process
from shared.metrics import Counter as Metric
from shared.metrics import consumer as consumer_metrics
from shared.metrics import get_metrics

__all__ = [
    "BatchFailures",
    "LambdaHandler",
    "LambdaRuntime",
    "batch_trigger",
    "check_sources",
    "default_runtime",
    "entry_point",
    "handler_of",
    "run_batch",
    "source_label",
]

T = TypeVar("T")
LambdaHandler = Callable[[Any, Any], Any]
Invoke = Callable[[AwsClients, Any, Any], Awaitable[T]]

_log = structlog.get_logger("shared.hosts.lambda")
_SAFETY_SECONDS: Final = 1.0
_CLOSE_TIMEOUT_SECONDS: Final = 5.0  # closing the clients at exit never hangs the exit


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


_RUNTIME = LambdaRuntime()


def default_runtime(runtime: LambdaRuntime | None) -> LambdaRuntime:
    """`runtime`, or the module's one runtime per container."""
    return runtime or _RUNTIME


def check_sources(handler: object, setup: object) -> None:
    """Raises ValueError unless exactly one of `handler` and `setup` is given."""
    if (handler is None) == (setup is None):
        raise ValueError("give exactly one of handler and setup=")


def entry_point(runtime: LambdaRuntime, invoke: Invoke[T]) -> Callable[[Any, Any], T]:
    """Lambda's `handler(event, context)` for `invoke(aws, event, context)`: run on the
    container's loop, the metrics flushed after every invocation (one EMF line per source,
    which Lambda's log stream carries to CloudWatch)."""

    async def flushing(aws: AwsClients, event: Any, context: Any) -> T:
        try:
            return await invoke(aws, event, context)
        finally:
            get_metrics().flush()

    def entry(event: Any, context: Any) -> T:
        return runtime.run(lambda aws: flushing(aws, event, context))

    return entry


def _remaining(context: Any) -> float | None:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if getter is None:
        return None
    return max(0.0, float(getter()) / 1000.0 - _SAFETY_SECONDS)


async def handler_of(
    runtime: LambdaRuntime, aws: AwsClients, handler: BatchHandler | None,
    setup: HandlerFactory | None,
) -> BatchHandler:
    """`handler`, or the one `setup(aws, resources)` built for this container."""
    if handler is not None:
        return handler
    assert setup is not None
    factory = setup
    built: BatchHandler = await runtime.built(
        factory, lambda: factory(aws, runtime.resources)
    )
    return built


def source_label(message: Message) -> str:
    """The metrics name of an event source: queue, stream or table name from its ARN."""
    arn = str(message.raw.get("eventSourceARN") or message.source_name)
    if ":table/" in arn:
        return arn.split(":table/", 1)[1].split("/", 1)[0]
    return arn.rsplit(":", 1)[-1].rsplit("/", 1)[-1] or "lambda"


async def run_batch(
    handler: BatchHandler, messages: Sequence[Message], context: Any
) -> BatchResult:
    """`handler(messages)` within the function's deadline (from `context`), with the
    consumer metrics recorded. A handler error retries the batch; at the deadline, what
    finished keeps its outcome and the rest get none (reported as failures)."""
    started = time.perf_counter()
    result = await _run_once(handler, messages, _remaining(context))
    metrics = consumer_metrics(source_label(messages[0]))
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
    # The mapping owns visibility in Lambda and the deadline bounds the work: a heartbeat
    # has nothing to extend (BatchProgress without `extend`).
    progress = BatchProgress()
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
        partial = progress.result()
        _log.warning("function deadline reached; unfinished messages reported as failures",
                     finished=len(partial.outcomes), messages=len(messages))
        return partial
    return result


def _log_failures(messages: Sequence[Message], result: BatchResult) -> None:
    for m in messages:
        outcome = result.outcomes.get(m.id)
        if outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE):
            continue
        _log.warning("message failed", message_id=m.id, receive_count=m.receive_count,
                     outcome=outcome.value if outcome else "not attempted",
                     error=result.reasons.get(m.id), source=m.source.value)


BatchFailures = Callable[
    [LambdaRuntime, AwsClients, list[Message], BatchResult], Awaitable[list[dict[str, str]]]
]
"""A trigger's own settling: what it does after the batch ran (backoff, DLQ, failure queue)
and the `batchItemFailures` it reports."""


def batch_trigger(
    to_message: Callable[[Mapping[str, Any]], Message],
    *,
    handler: BatchHandler | None,
    setup: HandlerFactory | None,
    runtime: LambdaRuntime | None,
    failures: BatchFailures,
) -> LambdaHandler:
    """The entry point of an event source mapping with ReportBatchItemFailures: the event's
    `Records` made `Message`s by `to_message`, the handler built once per container, the
    batch run within the deadline (`run_batch`), each failure logged, then
    `{"batchItemFailures": await failures(runtime, aws, messages, result)}`. An event
    without records answers an empty list.

    Raises ValueError unless exactly one of handler and setup is given.
    """
    check_sources(handler, setup)
    rt = default_runtime(runtime)

    async def invoke(aws: AwsClients, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        messages = [to_message(r) for r in event.get("Records") or []]
        if not messages:
            return {"batchItemFailures": []}
        batch = await handler_of(rt, aws, handler, setup)
        result = await run_batch(batch, messages, context)
        _log_failures(messages, result)
        return {"batchItemFailures": await failures(rt, aws, messages, result)}

    return entry_point(rt, invoke)
