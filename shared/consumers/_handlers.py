"""From a plain async handler over one typed event to a `BatchHandler`.

Services write

    async def handle(event: TypedEvent[DevicePaired], ctx: HandlerContext) -> None: ...

and `batch_handler(handle, decode=registry.decode)` gives the `BatchHandler` every host
runs. Per message: decode (a failure is an `InvalidMessageError` -> DEAD_LETTER), call the
handler inside its own consumer span, and map what it raised to an `Outcome` by type:

    returns None (or Outcome.SUCCEEDED)   SUCCEEDED
    raises DuplicateEvent                 DUPLICATE   (deleted, counted as a skip)
    raises a retryable error / unknown    RETRY       (its `retry_after` sets the delay)
    raises a PermanentError               DEAD_LETTER (InvalidMessageError, DeadLetter ...)

Messages sharing a group (FIFO MessageGroupId, stream partition key) run one after another
and the first failure stops the rest of that group: they get no outcome, so the host
releases them unattempted and order holds. Different groups, and messages without a group,
run concurrently (bounded by `concurrency`). Data never escapes as an exception: whatever a
message does, the batch returns a result.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import structlog

from shared.consumers._batch import plan_groups
from shared.consumers._delivery import DeliveryControl, current_control
from shared.consumers._errors import DuplicateEvent, RetryLater
from shared.consumers._message import (
    BatchHandler,
    BatchResult,
    Message,
    Outcome,
    destination_name,
    message_span_attributes,
)
from shared.errors import InvalidMessageError, RetryableError, is_retryable
from shared.events import ClaimCheckReader, EventRegistry
from shared.tracing import BatchTrace, consumer_span

__all__ = [
    "EventHandler",
    "HandlerContext",
    "batch_handler",
    "classify",
    "json_body",
    "json_object",
]

E = TypeVar("E")

_log = structlog.get_logger("shared.consumers")

_DATA_ERRORS = (InvalidMessageError, ValueError, TypeError, KeyError)
_MAX_REASON = 1_000  # characters; reasons travel as message attributes and log fields


def _message_log(message: Message, event_id: str | None) -> Any:
    log = _log.bind(
        message_id=message.id, source=message.source.value, receive_count=message.receive_count
    )
    return log if event_id is None else log.bind(event_id=event_id)


@dataclass(frozen=True, kw_only=True)
class HandlerContext:
    """Per-message context handed to an event handler.

    `log` is bound with the message id, the event id (when the event has one), the source
    and the receive count. `heartbeat()` extends the message's lease on hosts that support
    it (the SQS worker); elsewhere it does nothing. The SQS worker also extends on its own
    before the visibility timeout runs out, so most handlers never call it.
    """

    message: Message
    event_id: str | None = None
    _control: DeliveryControl | None = field(default=None, repr=False)

    @functools.cached_property
    def log(self) -> Any:
        """A structlog logger bound with message id, event id, source and receive count
        (made on first use: most messages never log)."""
        return _message_log(self.message, self.event_id)

    @property
    def receive_count(self) -> int:
        return self.message.receive_count

    async def heartbeat(self, seconds: float | None = None) -> None:
        """Ask the host to keep this message for `seconds` more (None: a full timeout).

        Raises ValueError when `seconds` is negative.
        """
        if seconds is not None and seconds < 0:
            raise ValueError(f"seconds must be non-negative, got {seconds!r}")
        if self._control is not None:
            await self._control.extend(self.message, seconds)


EventHandler = Callable[[E, HandlerContext], Awaitable[Outcome | None]]
"""`async def handle(event, ctx) -> None`; returning an `Outcome` overrides SUCCEEDED."""


def json_body(message: Message) -> Any:
    """The default decoder: the body parsed as JSON.

    Raises InvalidMessageError (field "body") when the body is not JSON.
    """
    try:
        return json.loads(message.body)
    except (ValueError, TypeError) as exc:
        raise InvalidMessageError(f"not JSON ({exc})", field="body") from exc


def json_object(message: Message) -> dict[str, Any]:
    """A decoder for bodies that must be one JSON object (a task, a command).

    Raises InvalidMessageError (field "body") when the body is not JSON or not an object.
    """
    body = json_body(message)
    if not isinstance(body, dict):
        raise InvalidMessageError("not a JSON object", field="body")
    return body


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def classify(exc: BaseException) -> tuple[Outcome, float | None]:
    """The outcome an exception stands for, and a retry delay hint if it carries one
    (`RetryableError.retry_after`: `RetryLater(delay=)`, an idempotency key in progress
    elsewhere until its lease ends, ...)."""
    if isinstance(exc, DuplicateEvent):
        return Outcome.DUPLICATE, None
    if isinstance(exc, RetryableError):
        return Outcome.RETRY, exc.retry_after
    if is_retryable(exc):
        return Outcome.RETRY, None
    return Outcome.DEAD_LETTER, None


def _event_span_attributes(message: Message, event: Any) -> dict[str, Any]:
    """The message's span attributes plus, for an event envelope, its type and aggregate
    (an order id, a device id): what `fleetline trace <id>` finds a message's span by."""
    attributes = message_span_attributes(message)
    envelope = getattr(event, "envelope", event)
    kind = getattr(envelope, "type", None)
    if isinstance(kind, str):
        attributes["fleetline.event.type"] = kind
    aggregate = getattr(envelope, "aggregate_id", None)
    if isinstance(aggregate, str) and aggregate:
        attributes["fleetline.aggregate.id"] = aggregate
    return attributes


def _batch_span_name(first: Message) -> str:
    return f"process {destination_name(first.source_name)} batch"


def _batch_attributes(first: Message) -> dict[str, Any]:
    """Attributes of a batch span (a batch comes from one source)."""
    return {
        key: value
        for key, value in message_span_attributes(first).items()
        if key in ("messaging.system", "messaging.destination.name", "messaging.operation.type",
                   "messaging.operation.name")
    }


class _Collector:
    def __init__(self, control: DeliveryControl | None, batch: BatchTrace | None) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.reasons: dict[str, str] = {}
        self.delays: dict[str, float] = {}
        self.batch = batch  # producer contexts noted by the consumer spans (tracing on)
        self._control = control

    def finish(self, message: Message, outcome: Outcome) -> Outcome:
        self.outcomes[message.id] = outcome
        if self._control is not None:
            self._control.completed(message, outcome, self.reasons.get(message.id),
                                    self.delays.get(message.id))
        return outcome

    def result(self) -> BatchResult:
        return BatchResult(self.outcomes, self.reasons, self.delays)


def batch_handler(
    handler: EventHandler[E],
    *,
    registry: EventRegistry | None = None,
    claim_check: ClaimCheckReader | None = None,
    decode: Callable[[Message], E | Awaitable[E]] | None = None,
    concurrency: int | None = None,
    tracing: bool = True,
) -> BatchHandler:
    """Adapt `handler` (one typed event at a time) into a `BatchHandler`.

    The event comes from `registry` (`TypedEvent`s from any transport's body; with
    `claim_check`, payloads stored in S3 are fetched first), or from `decode` (a function
    of the Message, sync or async), or else is the body parsed as JSON. A decoder raises
    `InvalidMessageError` for data that can never be handled; `ValueError`, `TypeError` and
    `KeyError` from a decoder count the same (pydantic's ValidationError is a ValueError).

    `concurrency` bounds how many lanes (groups, or single messages without a group) run at
    once; None runs the whole batch at once (a batch is at most 10 SQS messages; pass a
    bound for large stream batches). `tracing` opens one CONSUMER span per message that
    continues the producer's trace (the envelope's `trace`, else the Message's transport
    attributes: `traceparent`, `AWSTraceHeader`);
    when the batch's producers come from more than one trace, it also makes one batch span
    (`<destination> process batch`, covering the batch) linking each distinct producer
    context (`shared.tracing.BatchTrace`). A single-trace batch gets no extra span.

    Raises ValueError when `concurrency` < 1, or when both `registry` and `decode` are given.
    """
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    if registry is not None and decode is not None:
        raise ValueError("give either registry or decode, not both")
    decoder: Callable[[Message], Any]
    if registry is not None:
        chosen = registry

        if claim_check is not None:
            reader = claim_check

            async def decoder(message: Message) -> Any:
                return await chosen.decode_async(message.body, claim_check=reader)
        else:

            def decoder(message: Message) -> Any:
                return chosen.decode(message.body)
    else:
        decoder = decode if decode is not None else json_body

    async def one(message: Message, into: _Collector) -> Outcome:
        event: Any = None
        failure: Exception | None = None
        try:
            event = decoder(message)
            if inspect.isawaitable(event):
                event = await event
        except Exception as exc:  # data never crashes a worker
            failure = exc
        # `process <destination>`, as the conventions name a consumer span.
        name = f"process {destination_name(message.source_name)}"
        with (
            consumer_span(event if failure is None else message, name,
                          attributes=_event_span_attributes(message, event), batch=into.batch,
                          fallback=None if failure is not None else message)
            if tracing
            else contextlib.nullcontext()
        ):
            if failure is not None:
                return undecodable(message, failure, into)
            event_id = getattr(event, "id", None)
            ctx = HandlerContext(
                message=message,
                event_id=None if event_id is None else str(event_id),
                _control=current_control(),
            )
            try:
                returned = await handler(event, ctx)
            except Exception as exc:
                return failed(ctx, exc, into)
            outcome = returned if isinstance(returned, Outcome) else Outcome.SUCCEEDED
            return into.finish(message, outcome)

    def undecodable(message: Message, exc: Exception, into: _Collector) -> Outcome:
        outcome, _ = classify(exc)
        if isinstance(exc, _DATA_ERRORS):
            # A decoder failing on the data (pydantic's ValidationError and JSONDecodeError
            # are ValueErrors) will fail the same way next time.
            outcome = Outcome.DEAD_LETTER
        into.reasons[message.id] = _reason(exc)
        _message_log(message, None).warning(
            "message undecodable", outcome=outcome.value, error=_reason(exc))
        return into.finish(message, outcome)

    def failed(ctx: HandlerContext, exc: Exception, into: _Collector) -> Outcome:
        message = ctx.message
        outcome, delay = classify(exc)
        if outcome is Outcome.DUPLICATE:
            ctx.log.info("duplicate skipped")
            return into.finish(message, outcome)
        into.reasons[message.id] = _reason(exc)
        if delay is not None:
            into.delays[message.id] = delay
        ctx.log.warning(
            "handler failed",
            outcome=outcome.value,
            error=_reason(exc),
            # A traceback for the unexpected (bugs, outages); not for deliberate signals.
            exc_info=outcome is Outcome.RETRY and not isinstance(exc, RetryLater),
        )
        return into.finish(message, outcome)

    async def lane(messages: Sequence[Message], into: _Collector,
                   limiter: anyio.CapacityLimiter | None) -> None:
        async with limiter if limiter is not None else _NULL_ASYNC:
            for message in messages:
                if await one(message, into) not in (Outcome.SUCCEEDED, Outcome.DUPLICATE):
                    return  # the rest of this group stays unattempted -> released

    async def run(messages: Sequence[Message]) -> BatchResult:
        # Single-message batches cannot mix traces: no BatchTrace, nothing noted.
        batch = BatchTrace() if tracing and len(messages) > 1 else None
        into = _Collector(current_control(), batch)
        try:
            lanes = plan_groups(messages)
            if len(lanes) == 1:
                await lane(lanes[0], into, None)
                return into.result()
            limiter = anyio.CapacityLimiter(concurrency) if concurrency is not None else None
            async with anyio.create_task_group() as tg:
                for group in lanes[1:]:
                    tg.start_soon(lane, group, into, limiter)
                # The first lane runs in this task: one task fewer per batch.
                await lane(lanes[0], into, limiter)
            return into.result()
        finally:
            if batch is not None:
                # Made at the end (also when cancelled): only now are all producers known.
                batch.finish(_batch_span_name(messages[0]), message_count=len(messages),
                             attributes=_batch_attributes(messages[0]))

    return run


class _NullAsync:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NULL_ASYNC = _NullAsync()
