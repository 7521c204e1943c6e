"""One shard task: reads one leased shard until it is drained, lost or ended.

    iterator from the checkpoint -> GetRecords(limit) -> handler -> settle -> failure queue
    -> checkpoint; idle backoff on an empty read; SHARD_END checkpoint + release at the end
    of a closed shard; on the way out, the lease goes back with the last completed position.

`StreamConsumer` (the coordinator: which shards this worker holds) starts one `ShardTask` per
lease it takes and hands it `ShardShared`: what all its shard tasks share (the source, the
handler, the lease table, the counters) and the coordinator's callbacks (`lose`,
`notice_handoff`, `shard_ended`, `finished`). The decisions are pure (`_decisions`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from shared.aws import AwsClients
from shared.consumers._batch import chunks
from shared.consumers._message import BatchHandler, BatchResult, Message, Outcome
from shared.consumers.streams._config import StreamConsumerConfig
from shared.consumers.streams._decisions import (
    FailedRecord,
    backoff_delay,
    is_shard_end,
    settle_batch,
)
from shared.consumers.streams._failures import failure_message, send_failure_messages
from shared.consumers.streams._lease_decisions import SHARD_END, Lease
from shared.consumers.streams._leases import LeaseLostError, LeaseTable
from shared.consumers.streams._source import (
    ExpiredIteratorError,
    InitialPosition,
    RecordsPage,
    ShardInfo,
    ShardSource,
    TrimmedDataError,
)
from shared.errors import RetryableError
from shared.metrics import ConsumerMetrics
from shared.metrics import Counter as Metric

__all__ = ["HeldLease", "ShardShared", "ShardTask", "epoch_ms"]


def epoch_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class HeldLease:
    """A lease this worker holds and the progress of its shard task."""

    lease: Lease
    expires_at_ms: int
    renewed_at: float
    position: str | None = None  # last completed sequence number
    checkpointed: str | None = None  # last written checkpoint
    drain: anyio.Event = field(default_factory=anyio.Event)
    lost: bool = False
    ended: bool = False
    handoff_to: str | None = None  # another worker asked for this lease: drain and release
    releasing: bool = False  # the shard task is handing the lease back: renewals stop

    def __post_init__(self) -> None:
        self.position = self.lease.checkpoint
        self.checkpointed = self.lease.checkpoint


@dataclass(frozen=True, kw_only=True)
class ShardShared:
    """What one consumer's shard tasks share, made once by `StreamConsumer`.

    `counts` and `lag` (shard id -> milliseconds behind) are the consumer's own, updated in
    place. `shard(shard_id)` is the stream's current description of a shard (None when the
    last sync did not list it). Callbacks: `lose(held, why)` marks a lease lost;
    `notice_handoff(held, stored)` acts on a hand-off request seen in a stored lease;
    `shard_ended()` asks for a shard sync and lease round; `finished(held)` is called last,
    when the task is done with its lease.
    """

    aws: AwsClients
    source: ShardSource
    handler: BatchHandler
    table: LeaseTable
    config: StreamConsumerConfig
    limit: int
    worker_id: str
    counts: Counter[str]
    lag: dict[str, int]
    metrics: ConsumerMetrics
    log: Any
    shard: Callable[[str], ShardInfo | None]
    lose: Callable[[HeldLease, str], None]
    notice_handoff: Callable[[HeldLease, Lease], None]
    shard_ended: Callable[[], None]
    finished: Callable[[HeldLease], None]


class ShardTask:
    """Processes the shard of `held` (see the module docstring); `run()` is the task."""

    def __init__(self, held: HeldLease, shared: ShardShared) -> None:
        self.held = held
        self._s = shared

    async def run(self) -> None:
        held = self.held
        try:
            await self._consume()
        except LeaseLostError:
            self._s.lose(held, "checkpoint refused")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._hand_back()
            self._s.finished(held)

    async def _hand_back(self) -> None:
        held = self.held
        if held.lost or held.ended:
            return
        newer = held.position if held.position != held.checkpointed else None
        held.releasing = True
        try:
            await self._s.table.release(
                held.lease, checkpoint=newer, keep_handoff=held.handoff_to is not None
            )
            if held.handoff_to is not None:
                self._s.counts["leases_handed_off"] += 1
            self._s.log.info("lease released", shard=held.lease.shard_id, checkpoint=held.position,
                           handed_to=held.handoff_to)
        except LeaseLostError:
            self._s.lose(held, "release refused")
        except RetryableError as exc:
            self._s.log.warning(
                "lease release failed; it expires instead", shard=held.lease.shard_id,
                error=str(exc),
            )

    async def _consume(self) -> None:
        held = self.held
        shard_id = held.lease.shard_id
        source = self._s.source
        iterator: str | None = None
        trimmed = False
        read_failures = 0
        if held.position == SHARD_END:  # ended but not released before a crash
            await self._end_shard()
            return
        while not held.drain.is_set():
            if epoch_ms() >= held.expires_at_ms:
                self._s.lose(held, "lease expired before it could be renewed")
                return
            try:
                if iterator is None:
                    after = None if trimmed else held.position
                    initial = (
                        InitialPosition.TRIM_HORIZON if trimmed else self._s.config.initial_position
                    )
                    iterator = await source.get_iterator(shard_id, after=after, initial=initial)
                    trimmed = False
                read_at = time.monotonic()
                page = await source.get_records(shard_id, iterator, limit=self._s.limit)
            except TrimmedDataError as exc:
                # The checkpoint is older than the stream's retention: those records are gone.
                # Say so loudly and carry on from the oldest record still there.
                self._s.log.error("records past retention were lost; resuming at TRIM_HORIZON",
                                shard=shard_id, checkpoint=held.position, error=str(exc))
                iterator, trimmed = None, True
                continue
            except ExpiredIteratorError:
                iterator = None
                continue
            except RetryableError as exc:
                read_failures += 1
                delay = backoff_delay(
                    read_failures, base=max(self._s.config.idle_backoff, 0.05),
                    cap=max(self._s.config.retry_backoff_max, self._s.config.idle_backoff),
                )
                self._s.log.warning("read failed; backing off", shard=shard_id, error=str(exc),
                                  delay=round(delay, 3))
                await self._pause(delay)
                continue
            read_failures = 0
            self._s.counts["reads"] += 1
            iterator = page.next_iterator
            self._note_lag(page)
            if page.messages:
                await self._process(page.messages)
                if held.lost or held.position != page.messages[-1].sequence:
                    return  # drained or lost mid-page; hand-back writes the position
            shard = self._s.shard(shard_id)
            if is_shard_end(
                next_iterator=page.next_iterator, got_records=bool(page.messages),
                ending_sequence=shard.ending_sequence if shard else None,
                position=held.position,
            ):
                await self._end_shard()
                return
            if page.messages:
                await self._checkpoint()
                if len(page.messages) >= self._s.limit or (page.millis_behind or 0) > 0:
                    continue  # more is waiting: read again at once
            # Paced from the read's start, not its end: the time spent handling the page and
            # checkpointing is not added to every record's wait, and a shard is still read
            # at most once per idle_backoff (Kinesis allows 5 reads a second per shard).
            await self._pause(self._s.config.idle_backoff - (time.monotonic() - read_at))

    async def _end_shard(self) -> None:
        held = self.held
        await self._s.table.release(held.lease, checkpoint=SHARD_END)
        held.position = held.checkpointed = SHARD_END
        held.ended = True
        self._s.counts["checkpoints"] += 1
        self._s.log.info("shard drained", shard=held.lease.shard_id)
        self._s.shard_ended()

    async def _checkpoint(self) -> None:
        held = self.held
        if held.position is None or held.position == held.checkpointed:
            return
        expires = epoch_ms() + int(self._s.config.lease_duration * 1000)
        stored = await self._s.table.checkpoint(held.lease, held.position, expires_at_ms=expires)
        self._s.notice_handoff(held, stored)
        held.checkpointed = held.position
        held.expires_at_ms = expires
        held.renewed_at = time.monotonic()
        self._s.counts["checkpoints"] += 1

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to `seconds` unless the shard is drained; True when not drained."""
        held = self.held
        if seconds > 0:
            with anyio.move_on_after(seconds):
                await held.drain.wait()
        return not held.drain.is_set()

    def _note_lag(self, page: RecordsPage) -> None:
        held = self.held
        if page.millis_behind is not None:
            lag = page.millis_behind
        elif page.messages and page.messages[-1].approximate_arrival is not None:
            arrival = page.messages[-1].approximate_arrival
            lag = max(0, int((time.time() - arrival) * 1000))
        elif not page.messages:
            lag = 0
        else:
            return
        self._s.lag[held.lease.shard_id] = lag
        self._s.metrics.observe_lag(lag / 1000)

    async def _process(self, messages: Sequence[Message]) -> None:
        """Hand `messages` to the handler until all are done; advance `held.position`."""
        held = self.held
        config = self._s.config
        self._s.counts["records_received"] += len(messages)
        self._s.metrics.count(Metric.RECEIVED, len(messages))
        self._s.metrics.observe_batch_size(len(messages))
        pending = list(messages)
        window = len(pending)
        head_attempts = 0
        failures = 0
        while pending and not held.lost:
            batch = pending[:window]
            result: BatchResult | None = None
            error: str | None = None
            self._s.counts["handler_calls"] += 1
            started = time.perf_counter()
            try:
                result = await self._s.handler(batch)
            except Exception as exc:  # a handler bug must not stop the shard
                error = f"{type(exc).__name__}: {exc}"
                if len(batch) > 1:  # bisecting: the traceback comes once the record is alone
                    self._s.log.warning("handler raised; halving the batch",
                                      shard=held.lease.shard_id, batch_size=len(batch),
                                      error=error)
                else:
                    self._s.log.exception("handler raised", shard=held.lease.shard_id,
                                        sequence_number=batch[0].sequence)
            self._s.metrics.observe_latency(time.perf_counter() - started)
            settlement = settle_batch(
                batch, result, head_attempts=head_attempts, max_attempts=config.max_attempts,
                handler_error=error,
            )
            if result is not None:
                self._count_outcomes(batch[: settlement.completed], result)
            if settlement.dead_letters and not await self._dead_letter(settlement.dead_letters):
                return  # drained while the failure queue was unreachable
            if settlement.completed:
                held.position = settlement.checkpoint
                pending = pending[settlement.completed:]
            head_attempts = settlement.head_attempts
            window = max(1, min(settlement.window, len(pending)))
            if settlement.failed:
                self._s.metrics.count(Metric.FAILED)
            if settlement.retry:
                failures += 1
                self._s.counts["records_retried"] += 1
                self._s.metrics.count(Metric.RETRIED)
                await self._checkpoint()
                delay = backoff_delay(failures, base=config.retry_backoff,
                                      cap=config.retry_backoff_max)
                if not await self._pause(delay):
                    return
            else:
                failures = 0

    def _count_outcomes(self, done: Sequence[Message], result: BatchResult) -> None:
        for message in done:
            outcome = result.outcomes.get(message.id)
            if outcome == Outcome.SUCCEEDED:
                self._s.counts["records_succeeded"] += 1
                self._s.metrics.count(Metric.SUCCEEDED)
            elif outcome == Outcome.DUPLICATE:
                self._s.counts["records_duplicate"] += 1
                self._s.metrics.count(Metric.DUPLICATES_SKIPPED)

    async def _dead_letter(self, dead: Sequence[FailedRecord]) -> bool:
        """Send `dead` to the failure queue (retrying until it succeeds or the shard is
        drained). True when they are safely away."""
        held = self.held
        shard_id = held.lease.shard_id
        for letter in dead:
            self._s.log.error(
                "record dead-lettered", shard=shard_id, sequence_number=letter.message.sequence,
                partition_key=letter.message.group_id, reason=letter.reason,
                attempts=letter.attempts, failure_queue=self._s.config.failure_queue_url,
            )
        if self._s.config.failure_queue_url is None:
            self._s.counts["records_dead_lettered"] += len(dead)
            self._s.metrics.count(Metric.DEAD_LETTERED, len(dead))
            return True
        remaining = list(dead)
        failures = 0
        while remaining:
            try:
                remaining = await self._send_failures(shard_id, remaining)
            except RetryableError as exc:
                self._s.log.warning("failure queue unavailable", shard=shard_id, error=str(exc))
            if not remaining:
                break
            failures += 1
            delay = backoff_delay(failures, base=self._s.config.retry_backoff,
                                  cap=self._s.config.retry_backoff_max)
            if not await self._pause(delay):
                return False
        self._s.counts["records_dead_lettered"] += len(dead)
        self._s.metrics.count(Metric.DEAD_LETTERED, len(dead))
        return True

    async def _send_failures(self, shard_id: str, dead: list[FailedRecord]) -> list[FailedRecord]:
        """One SendMessageBatch per 10 records; returns those SQS did not accept."""
        sqs = await self._s.aws.client("sqs")
        assert self._s.config.failure_queue_url is not None
        failed: list[FailedRecord] = []
        for chunk in chunks(dead):
            bodies = [
                failure_message(
                    letter.message, stream=self._s.source.name, shard_id=shard_id,
                    reason=letter.reason, attempts=letter.attempts, worker=self._s.worker_id,
                    application=self._s.config.application,
                )
                for letter in chunk
            ]
            refused = await send_failure_messages(sqs, self._s.config.failure_queue_url, bodies)
            failed.extend(chunk[index] for index in refused)
        return failed
