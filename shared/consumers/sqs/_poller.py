"""The SQS consumer: long polling, bounded in-flight work, batched deletes and visibility
changes, a visibility heartbeat, DLQ routing with reasons, and a graceful drain.

One `SqsConsumer` owns every background task it starts in one anyio task group inside
`run()`:

    pollers (1..n)   ReceiveMessage (<= 10, long poll) while in-flight slots are free
    batch tasks      one per received batch: BatchHandler -> settle -> apply
    heartbeat        one task: ChangeMessageVisibilityBatch for messages about to reappear
    delete buffer    one task: DeleteMessageBatch at 10 receipts or after a short delay

A message's life: received (invisible for the visibility timeout) -> handled, its
visibility extended while the handler runs -> SUCCEEDED/DUPLICATE: deleted (batched);
RETRY: visible again after a backoff delay (exponential, full jitter, by receive count);
not attempted (a FIFO group stopped earlier, or shutdown): visible again now; DEAD_LETTER
(or RETRY on the last allowed receive): sent to the DLQ with the reason, then deleted.

`stop()` ends polling, lets running batches finish within `drain_seconds`, releases what did
not finish (visibility 0), flushes pending deletes, and `run()` returns.
"""

from __future__ import annotations

import enum
import math
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
import structlog

from shared.aws import AwsClient, AwsClients, aws_errors
from shared.consumers._backoff import MAX_VISIBILITY_SECONDS, RandomSource
from shared.consumers._delivery import BatchProgress, delivery_control
from shared.consumers._errors import ConsumerError
from shared.consumers._message import BatchHandler, BatchResult, Message, Outcome
from shared.consumers.sqs._deletes import DeleteBuffer
from shared.consumers.sqs._queue import change_visibility, describe_queue, send_dead_letters
from shared.consumers.sqs._settings import DeadLetterMode, SqsConsumerStatistics, SqsSettings
from shared.consumers.sqs._settle import (
    Action,
    Disposition,
    Settlement,
    due_for_extension,
    settle,
)
from shared.consumers.sqs._wire import message_from_sqs
from shared.errors import AwsRequestError, AwsUnavailableError
from shared.metrics import ConsumerMetrics
from shared.metrics import Counter as Metric
from shared.metrics import consumer as consumer_metrics

__all__ = ["SqsConsumer"]

_log = structlog.get_logger("shared.consumers.sqs")

_FATAL_RECEIVE_CODES: Final = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "AccessDenied",
        "AccessDeniedException",
        "InvalidAddress",
        "KMS.AccessDeniedException",
    }
)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"



class _Slots:
    """The in-flight bound: pollers take slots before receiving, batches give them back."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._changed = anyio.Event()

    async def take_up_to(self, wanted: int) -> int:
        while self.used >= self.capacity:
            await self._changed.wait()
        taken = min(wanted, self.capacity - self.used)
        self.used += taken
        return taken

    def give_back(self, count: int) -> None:
        if count <= 0:
            return
        self.used -= count
        self._changed.set()
        self._changed = anyio.Event()


@dataclass
class _Counters:
    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, amount: float = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount

    def high(self, name: str, value: float) -> None:
        self.values[name] = max(self.values.get(name, 0.0), value)


class SqsConsumer:
    """Consumes one SQS queue (standard or FIFO) into a `BatchHandler`.

        consumer = SqsConsumer(aws, queue_url, handler, settings=SqsSettings())
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)   # returns once the queue is inspected and polling
            ...
            consumer.stop()                # run() returns after the drain

    `rng` seeds the backoff's jitter (tests inject a seeded `random.Random`).
    A consumer runs once: calling `run()` again is refused.
    """

    def __init__(
        self,
        aws: AwsClients,
        queue_url: str,
        handler: BatchHandler,
        *,
        settings: SqsSettings | None = None,
        rng: RandomSource | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        if not queue_url:
            raise ValueError("queue_url must not be empty")
        self.queue_url = queue_url
        self.settings = settings or SqsSettings()
        self._aws = aws
        self._handler = handler
        self._rng: RandomSource = rng or random.Random()
        self._state = _State.NEW
        self._stop_requested = anyio.Event()
        self._drain_seconds = self.settings.drain_seconds
        self._work_scope: anyio.CancelScope | None = None
        self._slots = _Slots(self.settings.max_in_flight)
        self._counters = _Counters()
        # receipt -> (message, visibility deadline on the monotonic clock)
        self._tracked: dict[str, tuple[Message, float]] = {}
        self._work_arrived = anyio.Event()
        self._sqs: AwsClient = None
        self.visibility_timeout = self.settings.visibility_timeout or 30
        self.fifo = queue_url.endswith(".fifo")
        self.dead_letter_queue_url: str | None = self.settings.dead_letter_queue_url
        self.max_receive_count: int | None = None
        self._log = _log.bind(queue=queue_url.rsplit("/", 1)[-1])
        self._deletes = DeleteBuffer(
            queue_url=queue_url, flush_delay=self.settings.delete_flush_delay,
            retry_delay=lambda attempt: self.settings.backoff.delay(attempt, self._rng) / 4,
            count=self._counters.add, log=self._log,
        )
        # EMF metrics (shared.metrics) named after the queue: Received, Succeeded, Failed,
        # Retried, DeadLettered, DuplicatesSkipped, HandlerLatency, BatchSize, Lag.
        self._metrics = metrics or consumer_metrics(queue_url.rsplit("/", 1)[-1])

    # ------------------------------------------------------------------ lifecycle

    def stop(self, *, drain_seconds: float | None = None) -> None:
        """Stop receiving and drain: running batches get `drain_seconds` (default: the
        settings') to finish; the rest is released. Safe to call more than once (a later
        call may shorten the drain, e.g. a second SIGTERM with 0) and before `run()`.

        Raises ValueError when `drain_seconds` is negative.
        """
        if drain_seconds is not None:
            if drain_seconds < 0:
                raise ValueError(f"drain_seconds must be non-negative, got {drain_seconds!r}")
            self._drain_seconds = min(self._drain_seconds, drain_seconds)
            if self._work_scope is not None and self._stop_requested.is_set():
                self._work_scope.deadline = min(
                    self._work_scope.deadline, anyio.current_time() + self._drain_seconds
                )
        self._stop_requested.set()

    def statistics(self) -> SqsConsumerStatistics:
        """A snapshot of the counters."""
        values = {k: v for k, v in self._counters.values.items()}
        ints = {k: int(v) for k, v in values.items() if k not in {"handler_seconds",
                                                                  "max_lag_seconds"}}
        return SqsConsumerStatistics(
            **ints,
            in_flight=len(self._tracked),
            handler_seconds=values.get("handler_seconds", 0.0),
            max_lag_seconds=values.get("max_lag_seconds", 0.0),
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until `stop()`; then drain, release, flush and return.

        Signals readiness (`task_group.start`) once the queue's attributes are read.

        Raises:
            RuntimeError: `run()` was called before on this consumer.
            ConsumerError: the queue does not exist or may not be read (not retried).
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"SqsConsumer.run() may be called once (state: {self._state.value})")
        self._state = _State.RUNNING
        self._sqs = await self._aws.client("sqs")
        await self._inspect_queue()
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self._deletes.run, self._sqs)
                heartbeat_scope = anyio.CancelScope()
                services.start_soon(self._heartbeat_loop, heartbeat_scope)
                try:
                    await self._consume(task_status)
                finally:
                    # Whatever is still tracked never settled: its batch was cancelled by
                    # the drain deadline (or never started). Release it in one go.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                        leftover = [m for m, _ in self._tracked.values()]
                        self._tracked.clear()
                        await self._release(leftover, reason="shutdown")
                        await self._deletes.close()
                    heartbeat_scope.cancel()
        except BaseExceptionGroup as group:
            # Surface a lone ConsumerError (queue gone, access denied) as itself.
            fatal = group.subgroup(lambda e: isinstance(e, ConsumerError))
            if fatal is not None and fatal.exceptions and group.split(ConsumerError)[1] is None:
                first = fatal.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from group
            raise
        finally:
            self._state = _State.STOPPED
            self._log.info("consumer stopped", **self._summary())

    async def _consume(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as work:
            self._work_scope = work.cancel_scope
            async with anyio.create_task_group() as polling:
                for index in range(self.settings.pollers):
                    polling.start_soon(self._poll_loop, work, index)
                task_status.started()
                self._log.info(
                    "consumer started",
                    fifo=self.fifo,
                    visibility_timeout=self.visibility_timeout,
                    dead_letter_queue=self.dead_letter_queue_url,
                    max_receive_count=self.max_receive_count,
                )
                await self._stop_requested.wait()
                self._state = _State.STOPPING
                # A receive cancelled mid-flight may have taken messages: they reappear
                # after their visibility timeout; nothing is lost.
                polling.cancel_scope.cancel()
            self._log.info("draining", in_flight=len(self._tracked),
                           drain_seconds=self._drain_seconds)
            work.cancel_scope.deadline = anyio.current_time() + self._drain_seconds

    async def _inspect_queue(self) -> None:
        try:
            queue = await describe_queue(self._aws, self.queue_url,
                                         dead_letter_queue_url=self.dead_letter_queue_url,
                                         log=self._log)
        except AwsRequestError as exc:
            raise ConsumerError(f"cannot read queue {self.queue_url}: {exc}") from exc
        if self.settings.visibility_timeout is None:
            self.visibility_timeout = queue.visibility_timeout
        self.fifo = queue.fifo or self.fifo
        self.max_receive_count = queue.max_receive_count
        self.dead_letter_queue_url = queue.dead_letter_queue_url

    # ------------------------------------------------------------------ receiving

    async def _poll_loop(self, work: anyio.abc.TaskGroup, index: int) -> None:
        failures = 0
        while True:
            wanted = await self._slots.take_up_to(self.settings.max_messages)
            try:
                raw = await self._receive(wanted)
            except AwsUnavailableError as exc:
                self._slots.give_back(wanted)
                failures += 1
                delay = self.settings.receive_error_backoff.delay(failures, self._rng)
                self._log.warning("receive failed; retrying", error=str(exc),
                                  poller=index, retry_in=round(delay, 3))
                await anyio.sleep(delay)
                continue
            except BaseException:
                self._slots.give_back(wanted)
                raise
            failures = 0
            messages = [message_from_sqs(m, self.queue_url) for m in raw]
            self._slots.give_back(wanted - len(messages))
            if not messages:
                self._counters.add("empty_receives")
                continue
            self._track(messages)
            work.start_soon(self._process, messages)

    async def _receive(self, wanted: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": wanted,
            "WaitTimeSeconds": self.settings.wait_time_seconds,
            "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if self.settings.visibility_timeout is not None:
            params["VisibilityTimeout"] = self.settings.visibility_timeout
        if self.fifo:
            # The SDK's own retries reuse this id, so a receive whose response was lost
            # returns the same messages instead of hiding them for a visibility timeout.
            params["ReceiveRequestAttemptId"] = uuid.uuid4().hex
        self._counters.add("receive_requests")
        try:
            with aws_errors():
                response = await self._sqs.receive_message(**params)
        except AwsRequestError as exc:
            if exc.code in _FATAL_RECEIVE_CODES:
                raise ConsumerError(f"cannot receive from {self.queue_url}: {exc}") from exc
            raise
        return list(response.get("Messages", []))

    def _track(self, messages: Sequence[Message]) -> None:
        deadline = time.monotonic() + self.visibility_timeout
        now = time.time()
        lag = 0.0
        for message in messages:
            assert message.receipt is not None
            self._tracked[message.receipt] = (message, deadline)
            if message.approximate_arrival is not None:
                lag = max(lag, now - message.approximate_arrival)
        self._work_arrived.set()
        self._counters.high("max_lag_seconds", lag)
        self._counters.add("received", len(messages))
        self._metrics.count(Metric.RECEIVED, len(messages))
        self._metrics.observe_batch_size(len(messages))
        self._metrics.observe_lag(lag)

    # ------------------------------------------------------------------ handling

    async def _process(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        self._counters.add("batches")
        settled = False
        progress = BatchProgress(self.extend)
        try:
            try:
                with delivery_control(progress):
                    result = await self._handler(messages)
                if not isinstance(result, BatchResult):
                    raise TypeError(
                        f"a BatchHandler must return a BatchResult, not {type(result).__name__}"
                    )
            except anyio.get_cancelled_exc_class():
                # The drain deadline passed: settle what finished by its own outcome; the
                # rest stays tracked and `run()` releases it.
                with anyio.CancelScope(shield=True):
                    await self._settle_partial(messages, progress)
                raise
            except Exception as exc:  # a broken BatchHandler must not stop the consumer
                self._counters.add("handler_errors")
                self._log.exception("batch handler raised; retrying the batch",
                                    messages=len(messages))
                reason = f"{type(exc).__name__}: {exc}"
                result = BatchResult(
                    {m.id: Outcome.RETRY for m in messages}, {m.id: reason for m in messages}
                )
            elapsed = time.perf_counter() - started
            self._counters.add("handler_seconds", elapsed)
            self._metrics.observe_latency(elapsed)
            settlement = settle(
                messages,
                result,
                backoff=self.settings.backoff,
                rng=self._rng,
                dead_letter_available=self._dead_letter_available(),
                max_receive_count=self.max_receive_count,
            )
            with anyio.CancelScope(shield=True):
                try:
                    await self._apply(settlement)
                except Exception:
                    # Unexpected (AWS errors are handled inside): the messages reappear when
                    # their visibility ends, and the consumer keeps going.
                    self._log.exception("settling a batch failed", messages=len(messages))
            settled = True
        finally:
            # A cancelled batch (drain deadline) stays tracked: `run()` releases it at once.
            if settled:
                for message in messages:
                    assert message.receipt is not None
                    self._tracked.pop(message.receipt, None)
            self._slots.give_back(len(messages))

    async def _settle_partial(self, messages: Sequence[Message], progress: BatchProgress) -> None:
        partial = progress.result()
        done = [m for m in messages if m.id in partial.outcomes]
        if not done:
            return
        settlement = settle(
            done, partial, backoff=self.settings.backoff, rng=self._rng,
            dead_letter_available=self._dead_letter_available(),
            max_receive_count=self.max_receive_count,
        )
        await self._apply(settlement)
        for message in done:
            assert message.receipt is not None
            self._tracked.pop(message.receipt, None)

    def _dead_letter_available(self) -> bool:
        # Either we can send to the DLQ ourselves, or the queue's redrive will move the
        # message once we make it visible again.
        sendable = (self.settings.dead_letter is DeadLetterMode.SEND
                    and self.dead_letter_queue_url is not None)
        return sendable or self.max_receive_count is not None

    async def _apply(self, settlement: Settlement) -> None:
        if settlement.unknown_ids:
            self._log.warning("handler returned outcomes for unknown ids",
                              ids=list(settlement.unknown_ids))
        for d in settlement.dispositions:
            self._record(d)
        deletes = [d.message for d in settlement.of(Action.DELETE)]
        changes = [d for d in settlement.dispositions if d.action in (Action.RETRY, Action.RELEASE)]
        dead = list(settlement.of(Action.DEAD_LETTER))
        if dead and (self.settings.dead_letter is DeadLetterMode.REDRIVE
                     or self.dead_letter_queue_url is None):
            changes.extend(
                Disposition(message=d.message, action=Action.RELEASE, outcome=d.outcome,
                            visibility=0, reason=d.reason)
                for d in dead
            )
            dead = []
        if dead:
            sent, failed = await self._send_to_dead_letter_queue(dead)
            deletes.extend(sent)
            changes.extend(failed)
        self._deletes.add(deletes)
        if changes:
            await self._change_visibility(
                [(d.message, d.visibility or 0) for d in changes], purpose="retry"
            )

    def _record(self, d: Disposition) -> None:
        m = d.message
        if d.action is Action.DELETE:
            if d.outcome is Outcome.DUPLICATE:
                self._counters.add("duplicates")
                self._metrics.count(Metric.DUPLICATES_SKIPPED)
            else:
                self._counters.add("succeeded")
                self._metrics.count(Metric.SUCCEEDED)
            return
        if d.outcome is not None:
            self._metrics.count(Metric.FAILED)
        fields = {"message_id": m.id, "receive_count": m.receive_count, "error": d.reason}
        if m.group_id is not None:
            fields["group_id"] = m.group_id
        if d.action is Action.RETRY:
            self._counters.add("retried")
            self._metrics.count(Metric.RETRIED)
            last = self.max_receive_count is not None and m.receive_count >= self.max_receive_count
            self._log.warning(
                "message failed; redrive moves it to the DLQ" if last
                else "message failed; retrying later",
                visibility_timeout=d.visibility, max_receive_count=self.max_receive_count,
                **fields,
            )
        elif d.action is Action.RELEASE:
            self._counters.add("released")
            self._log.info("message released unattempted", **fields)
        else:
            self._counters.add("dead_lettered")
            self._metrics.count(Metric.DEAD_LETTERED)
            self._log.error("message dead-lettered", dead_letter_queue=self.dead_letter_queue_url,
                            mode=self.settings.dead_letter.value, **fields)

    # ------------------------------------------------------------------ DLQ

    async def _send_to_dead_letter_queue(
        self, dead: Sequence[Disposition]
    ) -> tuple[list[Message], list[Disposition]]:
        """Send to the DLQ; returns (sent: to delete, failed: to retry after a backoff)."""
        assert self.dead_letter_queue_url is not None
        sent, failed = await send_dead_letters(
            self._sqs, dead, queue_url=self.queue_url,
            dead_letter_queue_url=self.dead_letter_queue_url, log=self._log,
        )
        retry = [
            Disposition(
                message=d.message, action=Action.RETRY, outcome=d.outcome,
                visibility=self.settings.backoff.visibility_timeout(
                    max(1, d.message.receive_count), self._rng),
                reason=d.reason,
            )
            for d in failed
        ]
        return sent, retry

    # ------------------------------------------------------------------ visibility

    async def _change_visibility(
        self, changes: Sequence[tuple[Message, int]], *, purpose: str
    ) -> list[Message]:
        return await change_visibility(
            self._sqs, self.queue_url, changes, purpose=purpose, log=self._log
        )

    async def _release(self, messages: Sequence[Message], *, reason: str) -> None:
        if not messages:
            return
        self._counters.add("released", len(messages))
        self._log.info("releasing unfinished messages", count=len(messages), reason=reason,
                       message_ids=[m.id for m in messages])
        await self._change_visibility([(m, 0) for m in messages], purpose="release")

    async def extend(self, message: Message, seconds: float | None = None) -> None:
        """`HandlerContext.heartbeat()`: keep `message` invisible for `seconds` more."""
        timeout = self.visibility_timeout if seconds is None else math.ceil(seconds)
        timeout = max(0, min(MAX_VISIBILITY_SECONDS, timeout))
        changed = await self._change_visibility([(message, timeout)], purpose="heartbeat")
        if changed and message.receipt in self._tracked:
            self._tracked[message.receipt] = (message, time.monotonic() + timeout)
            self._counters.add("visibility_extensions")

    async def _heartbeat_loop(self, scope: anyio.CancelScope) -> None:
        threshold = min(self.settings.extend_when_remaining, self.visibility_timeout / 2)
        interval = min(self.settings.heartbeat_interval, max(threshold / 2, 0.05))
        with scope:
            while True:
                if not self._tracked:
                    # Idle: sleep until a batch arrives instead of waking every interval.
                    self._work_arrived = anyio.Event()
                    await self._work_arrived.wait()
                await anyio.sleep(interval)
                now = time.monotonic()
                due = due_for_extension(
                    {r: deadline for r, (_, deadline) in self._tracked.items()},
                    now=now, threshold=threshold,
                )
                if not due:
                    continue
                messages = [self._tracked[r][0] for r in due if r in self._tracked]
                changed = await self._change_visibility(
                    [(m, self.visibility_timeout) for m in messages], purpose="heartbeat"
                )
                deadline = now + self.visibility_timeout
                for m in changed:
                    if m.receipt in self._tracked:
                        self._tracked[m.receipt] = (m, deadline)
                self._counters.add("visibility_extensions", len(changed))

    def _summary(self) -> dict[str, Any]:
        stats = self.statistics()
        return {
            "received": stats.received,
            "succeeded": stats.succeeded,
            "duplicates": stats.duplicates,
            "retried": stats.retried,
            "released": stats.released,
            "dead_lettered": stats.dead_lettered,
            "deleted": stats.deleted,
        }
