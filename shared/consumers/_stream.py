"""The shard consumer core shared by Kinesis and DynamoDB Streams.

A `ShardSource` is the narrow seam to one streaming service (list shards, get an iterator, get
records); `StreamConsumer` does everything else the same way for both: leases in DynamoDB,
rebalancing between worker processes, one task per leased shard handing each GetRecords page
to a `BatchHandler` in order, bounded retries, the failure queue, checkpoints after
processing, parents drained before children, and a clean hand-back on shutdown.

Tasks (all owned by the task group inside `run`):

    coordinator   every take_interval: list leases, plan (take / steal one), take;
                  every renew_interval: renew held leases not renewed by a checkpoint;
                  every shard_sync_interval (and when a shard ends): list shards, create
                  missing leases (parents first)
    shard task    per held lease: iterator from the checkpoint -> GetRecords(limit) ->
                  handler -> settle -> failure queue -> checkpoint; idle backoff on an empty
                  read; SHARD_END checkpoint + release at the end of a closed shard
"""

from __future__ import annotations

import enum
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
import structlog

from shared.aws import AwsClients, aws_errors
from shared.consumers._errors import ConsumerError
from shared.consumers._lease_decisions import SHARD_END, Lease, parents_first, plan_leases
from shared.consumers._leases import LeaseLostError, LeaseTable
from shared.consumers._message import BatchHandler, BatchResult, Message, Outcome, SourceKind
from shared.consumers._stream_decisions import (
    FailedRecord,
    backoff_delay,
    fit_failure_message,
    is_shard_end,
    settle_batch,
)
from shared.errors import PermanentError, RetryableError
from shared.metrics import ConsumerMetrics
from shared.metrics import Counter as Metric
from shared.metrics import consumer as consumer_metrics

__all__ = [
    "ExpiredIteratorError",
    "InitialPosition",
    "RecordsPage",
    "ShardInfo",
    "ShardSource",
    "StreamConsumer",
    "StreamConsumerConfig",
    "StreamConsumerStatistics",
    "TrimmedDataError",
]

log = structlog.get_logger("shared.consumers.stream")

# A failure-queue message is at most this many bytes (the record's body is cut to fit), so
# that a SendMessageBatch of 10 stays under SQS's 256 KiB; the sequence number finds the full
# record in the stream for as long as the stream retains it.
_FAILURE_MESSAGE_BYTES = 25_000


class InitialPosition(enum.StrEnum):
    """Where a shard without a checkpoint starts. Children of a reshard always start at
    TRIM_HORIZON (their parents were drained first, so nothing is skipped or repeated)."""

    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"


class ExpiredIteratorError(RetryableError):
    """The shard iterator expired (Kinesis: 5 min, DynamoDB Streams: 15 min): get a new one
    from the last processed position."""


class TrimmedDataError(RetryableError):
    """The position asked for is older than the stream's retention (DynamoDB Streams
    TrimmedDataAccessException): read on from the oldest record still retained."""


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """A shard as the stream describes it. `ending_sequence` is set once the shard is closed."""

    shard_id: str
    parent_shard_ids: tuple[str, ...] = ()
    ending_sequence: str | None = None


@dataclass(frozen=True, kw_only=True)
class RecordsPage:
    """One GetRecords answer. `millis_behind` is the service's figure (Kinesis) or None, in
    which case the lag is taken from the last record's approximate arrival time."""

    messages: Sequence[Message]
    next_iterator: str | None
    millis_behind: int | None = None


class ShardSource(Protocol):
    """The seam to one streaming service. Implementations translate SDK errors
    (`shared.aws.aws_errors`) and raise `ExpiredIteratorError` for an expired iterator."""

    @property
    def kind(self) -> SourceKind: ...

    @property
    def name(self) -> str:
        """The stream's name or ARN (logs, failure queue messages)."""
        ...

    @property
    def default_limit(self) -> int: ...

    async def list_shards(self) -> Sequence[ShardInfo]: ...

    async def get_iterator(
        self, shard_id: str, *, after: str | None, initial: InitialPosition
    ) -> str:
        """An iterator just after sequence number `after`, or at `initial` when None."""
        ...

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage: ...


@dataclass(frozen=True, kw_only=True)
class StreamConsumerConfig:
    """Settings of a Kinesis / DynamoDB Streams consumer. Defaults suit production; tests
    shorten the durations.

    lease_table:        DynamoDB table with partition key `lease_key` (S) (stack: LeasesTable).
    application:        names the consumer group; workers with the same application share the
                        stream's shards. Lease keys are "<application>#<shard id>".
    worker_id:          unique per process (default: host-pid-random).
    failure_queue_url:  SQS queue for records that cannot be processed (stack:
                        TelemetryFailureQueue). None: such records are logged at error level
                        with their shard id and sequence number and skipped.
    lease_duration:     a lease not renewed for this long may be taken (default 10 s, as KCL's
                        failover time): the time a dead worker's shards wait.
    renew_interval:     default lease_duration / 3, so two renewals can fail before expiry.
    take_interval:      rebalancing round (default lease_duration): each round lists the
                        leases once and takes or steals.
    shard_sync_interval: how often the shard list is read to find new shards (default 60 s;
                        a shard reaching its end triggers a sync at once).
    idle_backoff:       least time from the start of one read of a shard to the next when
                        the last read found no backlog (default 1 s: Kinesis allows 5 reads
                        per second per shard shared by all consumers).
    limit:              records per GetRecords (default and cap: the service maximum,
                        10,000 for Kinesis and 1,000 for DynamoDB Streams), so a busy shard
                        costs one request per page.
    max_attempts:       handler attempts per record before it goes to the failure queue.
    retry_backoff / retry_backoff_max: exponential backoff with full jitter between attempts.
    max_leases:         at most this many shards per worker (None: no cap).
    handoff_timeout:    a worker rebalancing asks the owner to hand a lease over (it finishes
                        its batch, checkpoints, releases: no duplicates); after this long
                        without a release it takes the lease by force. None: always by force.
    shutdown_grace:     after shutdown(), in-flight handlers get this long before they are
                        cancelled (keep it below the ECS stopTimeout, default 30 s).
    """

    lease_table: str
    application: str
    worker_id: str | None = None
    failure_queue_url: str | None = None
    initial_position: InitialPosition = InitialPosition.TRIM_HORIZON
    lease_duration: float = 10.0
    renew_interval: float | None = None
    take_interval: float | None = None
    shard_sync_interval: float = 60.0
    idle_backoff: float = 1.0
    limit: int | None = None
    max_attempts: int = 5
    retry_backoff: float = 0.5
    retry_backoff_max: float = 20.0
    max_leases: int | None = None
    handoff_timeout: float | None = 30.0
    shutdown_grace: float = 20.0

    def __post_init__(self) -> None:
        if not self.lease_table:
            raise ValueError("lease_table must not be empty")
        if not self.application or "#" in self.application:
            raise ValueError(f"application must be non-empty without '#': {self.application!r}")
        positive = {
            "lease_duration": self.lease_duration,
            "shard_sync_interval": self.shard_sync_interval,
            "shutdown_grace": self.shutdown_grace,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name, maybe in {
            "renew_interval": self.renew_interval, "take_interval": self.take_interval,
            "handoff_timeout": self.handoff_timeout,
        }.items():
            if maybe is not None and maybe <= 0:
                raise ValueError(f"{name} must be positive, got {maybe}")
        if self.renew_interval is not None and self.renew_interval >= self.lease_duration:
            raise ValueError("renew_interval must be shorter than lease_duration")
        for name, value in {
            "idle_backoff": self.idle_backoff, "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
        }.items():
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_leases is not None and self.max_leases < 1:
            raise ValueError(f"max_leases must be at least 1, got {self.max_leases}")

    @property
    def effective_renew_interval(self) -> float:
        return self.renew_interval if self.renew_interval is not None else self.lease_duration / 3

    @property
    def effective_take_interval(self) -> float:
        return self.take_interval if self.take_interval is not None else self.lease_duration


@dataclass(frozen=True, kw_only=True)
class StreamConsumerStatistics:
    """A snapshot of one consumer's counters since it started."""

    worker_id: str
    shards: tuple[str, ...]
    records_received: int = 0
    records_succeeded: int = 0
    records_duplicate: int = 0
    records_retried: int = 0
    records_dead_lettered: int = 0
    handler_calls: int = 0
    reads: int = 0
    checkpoints: int = 0
    leases_taken: int = 0
    leases_stolen: int = 0
    leases_lost: int = 0
    leases_handed_off: int = 0
    handoffs_requested: int = 0
    lease_rounds: int = 0
    millis_behind: Mapping[str, int] = field(default_factory=dict)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(eq=False)
class _Held:
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


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class StreamConsumer:
    """Consumes every shard of one stream through `source`, sharing the shards with the other
    workers of the same `config.application`.

        consumer = KinesisConsumer(aws, handler, stream="telemetry", config=config)
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)   # returns after the first lease round
            ...
            consumer.shutdown()            # finish in-flight batches, checkpoint, release

    Records of one shard reach the handler in order, one batch at a time; shards run
    concurrently. Delivery is at least once: after a crash or a stolen lease the next owner
    resumes from the last checkpoint.

    Cancelling the task group that runs `run` also hands the leases back (with the last
    completed position), in a shielded cleanup bounded to a few seconds.
    """

    def __init__(
        self,
        aws: AwsClients,
        handler: BatchHandler,
        source: ShardSource,
        config: StreamConsumerConfig,
        *,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._aws = aws
        self._handler = handler
        self._source = source
        self.config = config
        self.worker_id = config.worker_id or default_worker_id()
        self._table = LeaseTable(aws, config.lease_table, config.application)
        # Never above the service maximum (a Lambda mapping's BatchSize may be larger than
        # what one GetRecords returns: 10,000 for Kinesis, 1,000 for DynamoDB Streams).
        self._limit = min(config.limit or source.default_limit, source.default_limit)
        self._state = _State.NEW
        self._stopping = False
        self._wake = anyio.Event()
        self._sync_requested = False
        self._rebalance_requested = False
        self._held: dict[str, _Held] = {}
        self._shards: dict[str, ShardInfo] = {}
        self._counts: Counter[str] = Counter()
        self._lag: dict[str, int] = {}
        # EMF metrics (shared.metrics) named after the consumer group: Received, Succeeded,
        # Failed (failed attempts), Retried, DeadLettered, DuplicatesSkipped, HandlerLatency,
        # BatchSize (records per read) and Lag (iterator age, the largest of the period).
        self._metrics = metrics or consumer_metrics(config.application)
        self._log = log.bind(
            source=str(source.kind), stream=source.name, application=config.application,
            worker=self.worker_id,
        )

    # -- public ---------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until `shutdown()` (or cancellation). Reports started (for
        `TaskGroup.start`) after the first shard sync and lease round.

        Raises:
            RuntimeError: `run` was called before on this instance.
            ConsumerError: the stream or the lease table cannot be read at start-up (missing,
                access denied): retrying will not help.
            RetryableError: AWS was unavailable at start-up.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("A StreamConsumer runs once; make a new one to run again.")
        self._state = _State.RUNNING
        try:
            if not self._stopping:
                try:  # reads the stream and the lease table: both exist and are readable
                    await self._sync_shards()
                except PermanentError as exc:
                    # A missing stream or lease table, or no access: a worker exits on it.
                    raise ConsumerError(
                        f"cannot consume {self._source.name} with lease table "
                        f"{self.config.lease_table}: {exc}"
                    ) from exc
            async with anyio.create_task_group() as tg:
                if not self._stopping:
                    await self._rebalance(tg)
                task_status.started()
                self._log.info("stream consumer started", shards=sorted(self._held))
                await self._coordinate(tg)
        finally:
            self._state = _State.STOPPED
            self._log.info("stream consumer stopped", **self._count_fields())

    def shutdown(self) -> None:
        """Stop taking leases and reading; let each shard's in-flight batch finish (within
        `shutdown_grace`), checkpoint and release its lease so another worker takes it at
        once. `run` returns when that is done. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        for held in self._held.values():
            held.drain.set()
        self._wake.set()

    @property
    def held_shards(self) -> tuple[str, ...]:
        """Shard ids this worker is processing now."""
        return tuple(sorted(s for s, h in self._held.items() if not h.lost))

    def statistics(self) -> StreamConsumerStatistics:
        """An immutable snapshot of this consumer's counters, held shards and lag."""
        return StreamConsumerStatistics(
            worker_id=self.worker_id,
            shards=self.held_shards,
            millis_behind=dict(self._lag),
            **self._count_fields(),
        )

    # -- coordinator ----------------------------------------------------------------------

    def _count_fields(self) -> dict[str, int]:
        names = (
            "records_received", "records_succeeded", "records_duplicate", "records_retried",
            "records_dead_lettered", "handler_calls", "reads", "checkpoints", "leases_taken",
            "leases_stolen", "leases_lost", "leases_handed_off", "handoffs_requested",
            "lease_rounds",
        )
        return {name: self._counts[name] for name in names}

    def _request(self, *, sync: bool = False, rebalance: bool = False) -> None:
        self._sync_requested |= sync
        self._rebalance_requested |= rebalance
        self._wake.set()

    async def _coordinate(self, tg: anyio.abc.TaskGroup) -> None:
        config = self.config
        renew_every = config.effective_renew_interval
        now = time.monotonic()
        next_sync = now + config.shard_sync_interval
        next_take = now + config.effective_take_interval
        grace_started = False
        failures = 0
        while True:
            if self._stopping:
                if not grace_started:
                    grace_started = True
                    tg.start_soon(self._grace_timer, tg)
                if not self._held:
                    tg.cancel_scope.cancel()
                    return
            try:
                now = time.monotonic()
                if not self._stopping and (self._sync_requested or now >= next_sync):
                    self._sync_requested = False
                    await self._sync_shards()
                    next_sync = time.monotonic() + config.shard_sync_interval
                    self._rebalance_requested = True
                if not self._stopping and (self._rebalance_requested or now >= next_take):
                    self._rebalance_requested = False
                    await self._rebalance(tg)
                    next_take = time.monotonic() + config.effective_take_interval
                await self._renew_due(renew_every)
                failures = 0
            except RetryableError as exc:
                failures += 1
                self._log.warning("lease coordination failed; retrying", error=str(exc))
            wait = min(next_sync, next_take) - time.monotonic()
            wait = max(0.0, min(wait, renew_every / 2))
            if failures:  # DynamoDB or the stream is struggling: do not hammer it, but keep
                # trying within the renewal interval so held leases do not lapse
                wait = max(wait, renew_every / 4)
            if self._stopping:
                wait = min(wait, 0.05) if not self._held else renew_every / 2
            with anyio.move_on_after(wait):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()

    async def _grace_timer(self, tg: anyio.abc.TaskGroup) -> None:
        await anyio.sleep(self.config.shutdown_grace)
        if self._held:
            self._log.warning(
                "shutdown grace expired; cancelling in-flight handlers",
                shards=sorted(self._held),
            )
        tg.cancel_scope.cancel()

    async def _sync_shards(self) -> None:
        shards = await self._source.list_shards()
        self._shards = {shard.shard_id: shard for shard in shards}
        leases = await self._table.list()
        created = await self._table.create_missing(
            parents_first((s.shard_id, s.parent_shard_ids) for s in shards),
            existing=(lease.shard_id for lease in leases),
        )
        if created:
            self._log.info("created shard leases", created=created, shards=len(shards))
        # Drained shards that aged out of the stream (past retention) need no lease: their
        # children no longer wait for them (`is_eligible` ignores parents the stream forgot).
        retired = [
            lease for lease in leases if lease.finished and lease.shard_id not in self._shards
        ]
        for lease in retired:
            if await self._table.delete_finished(lease):
                self._log.info("deleted the lease of a retired shard", shard=lease.shard_id)

    async def _rebalance(self, tg: anyio.abc.TaskGroup) -> None:
        leases = await self._table.list()
        self._counts["lease_rounds"] += 1
        by_shard = {lease.shard_id: lease for lease in leases}
        for shard_id, held in self._held.items():
            current = by_shard.get(shard_id)
            if held.lost or held.ended:
                continue
            if current is None or (current.owner, current.counter) != (
                held.lease.owner, held.lease.counter,
            ):
                self._lose(held, "lease changed hands")
            else:
                self._notice_handoff(held, current)
        now_ms = _now_ms()
        plan = plan_leases(
            leases,
            me=self.worker_id,
            now_ms=now_ms,
            held=[s for s, h in self._held.items() if not h.lost],
            known_shards=self._shards.keys(),
            max_leases=self.config.max_leases,
            handoff_timeout_ms=(
                None if self.config.handoff_timeout is None
                else int(self.config.handoff_timeout * 1000)
            ),
        )
        if plan.request_handoff is not None:
            asked = plan.request_handoff
            if await self._table.request_handoff(asked, to=self.worker_id, now_ms=now_ms):
                self._counts["handoffs_requested"] += 1
                self._log.info("hand-off requested", shard=asked.shard_id, owner=asked.owner,
                               target=plan.target, workers=plan.live_workers)
        wanted = [(lease, False) for lease in plan.take]
        if plan.steal is not None:
            wanted.append((plan.steal, True))
        for lease, stolen in wanted:
            if lease.shard_id in self._held:  # a lost lease whose task is still winding down
                continue
            expires = _now_ms() + int(self.config.lease_duration * 1000)
            taken = await self._table.take(lease, owner=self.worker_id, expires_at_ms=expires)
            if taken is None:
                continue
            self._counts["leases_stolen" if stolen else "leases_taken"] += 1
            self._log.info(
                "lease stolen" if stolen else "lease taken", shard=lease.shard_id,
                previous_owner=lease.owner, checkpoint=taken.checkpoint, target=plan.target,
                workers=plan.live_workers,
            )
            held = _Held(lease=taken, expires_at_ms=expires, renewed_at=time.monotonic())
            self._held[taken.shard_id] = held
            tg.start_soon(self._shard_task, held, name=f"shard {taken.shard_id}")

    async def _renew_due(self, renew_every: float) -> None:
        now = time.monotonic()
        due = [
            h for h in self._held.values()
            if not h.lost and not h.ended and not h.releasing
            and now - h.renewed_at >= renew_every * 0.9
        ]
        if not due:
            return

        async def renew(held: _Held) -> None:
            expires = _now_ms() + int(self.config.lease_duration * 1000)
            try:
                stored = await self._table.renew(held.lease, expires_at_ms=expires)
            except LeaseLostError:
                # A renewal already in flight when the shard task released the lease finds
                # it released: the release decides (it reports its own refusal), not this.
                if not held.releasing:
                    self._lose(held, "renewal refused")
                return
            except RetryableError as exc:
                self._log.warning("lease renewal failed", shard=held.lease.shard_id, error=str(exc))
                return
            held.expires_at_ms = expires
            held.renewed_at = time.monotonic()
            self._notice_handoff(held, stored)

        async with anyio.create_task_group() as tg:
            for held in due:
                tg.start_soon(renew, held)

    def _notice_handoff(self, held: _Held, stored: Lease) -> None:
        """Another worker asked for this lease: finish the in-flight batch, checkpoint and
        release it (the shard task's hand-back does that once drained)."""
        if stored.handoff_to is None or stored.handoff_to == self.worker_id:
            return
        if held.handoff_to is None and not held.lost:
            held.handoff_to = stored.handoff_to
            held.drain.set()
            self._log.info("handing lease over", shard=held.lease.shard_id, to=stored.handoff_to)

    def _lose(self, held: _Held, why: str) -> None:
        if held.lost:
            return
        held.lost = True
        held.drain.set()
        self._counts["leases_lost"] += 1
        self._log.warning("lease lost", shard=held.lease.shard_id, why=why)

    # -- shard task -----------------------------------------------------------------------

    async def _shard_task(self, held: _Held) -> None:
        shard_id = held.lease.shard_id
        try:
            await self._consume_shard(held)
        except LeaseLostError:
            self._lose(held, "checkpoint refused")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._hand_back(held)
            self._held.pop(shard_id, None)
            self._lag.pop(shard_id, None)
            self._wake.set()

    async def _hand_back(self, held: _Held) -> None:
        if held.lost or held.ended:
            return
        newer = held.position if held.position != held.checkpointed else None
        held.releasing = True
        try:
            await self._table.release(
                held.lease, checkpoint=newer, keep_handoff=held.handoff_to is not None
            )
            if held.handoff_to is not None:
                self._counts["leases_handed_off"] += 1
            self._log.info("lease released", shard=held.lease.shard_id, checkpoint=held.position,
                           handed_to=held.handoff_to)
        except LeaseLostError:
            self._lose(held, "release refused")
        except RetryableError as exc:
            self._log.warning(
                "lease release failed; it expires instead", shard=held.lease.shard_id,
                error=str(exc),
            )

    async def _consume_shard(self, held: _Held) -> None:
        shard_id = held.lease.shard_id
        source = self._source
        iterator: str | None = None
        trimmed = False
        read_failures = 0
        if held.position == SHARD_END:  # ended but not released before a crash
            await self._end_shard(held)
            return
        while not held.drain.is_set():
            if _now_ms() >= held.expires_at_ms:
                self._lose(held, "lease expired before it could be renewed")
                return
            try:
                if iterator is None:
                    after = None if trimmed else held.position
                    initial = (
                        InitialPosition.TRIM_HORIZON if trimmed else self.config.initial_position
                    )
                    iterator = await source.get_iterator(shard_id, after=after, initial=initial)
                    trimmed = False
                read_at = time.monotonic()
                page = await source.get_records(shard_id, iterator, limit=self._limit)
            except TrimmedDataError as exc:
                # The checkpoint is older than the stream's retention: those records are gone.
                # Say so loudly and carry on from the oldest record still there.
                self._log.error("records past retention were lost; resuming at TRIM_HORIZON",
                                shard=shard_id, checkpoint=held.position, error=str(exc))
                iterator, trimmed = None, True
                continue
            except ExpiredIteratorError:
                iterator = None
                continue
            except RetryableError as exc:
                read_failures += 1
                delay = backoff_delay(
                    read_failures, base=max(self.config.idle_backoff, 0.05),
                    cap=max(self.config.retry_backoff_max, self.config.idle_backoff),
                )
                self._log.warning("read failed; backing off", shard=shard_id, error=str(exc),
                                  delay=round(delay, 3))
                await self._pause(held, delay)
                continue
            read_failures = 0
            self._counts["reads"] += 1
            iterator = page.next_iterator
            self._note_lag(shard_id, page)
            if page.messages:
                await self._process(held, page.messages)
                if held.lost or held.position != page.messages[-1].sequence:
                    return  # drained or lost mid-page; hand-back writes the position
            shard = self._shards.get(shard_id)
            if is_shard_end(
                next_iterator=page.next_iterator, got_records=bool(page.messages),
                ending_sequence=shard.ending_sequence if shard else None,
                position=held.position,
            ):
                await self._end_shard(held)
                return
            if page.messages:
                await self._checkpoint(held)
                if len(page.messages) >= self._limit or (page.millis_behind or 0) > 0:
                    continue  # more is waiting: read again at once
            # Paced from the read's start, not its end: the time spent handling the page and
            # checkpointing is not added to every record's wait, and a shard is still read
            # at most once per idle_backoff (Kinesis allows 5 reads a second per shard).
            await self._pause(held, self.config.idle_backoff - (time.monotonic() - read_at))

    async def _end_shard(self, held: _Held) -> None:
        await self._table.release(held.lease, checkpoint=SHARD_END)
        held.position = held.checkpointed = SHARD_END
        held.ended = True
        self._counts["checkpoints"] += 1
        self._log.info("shard drained", shard=held.lease.shard_id)
        self._request(sync=True, rebalance=True)

    async def _checkpoint(self, held: _Held) -> None:
        if held.position is None or held.position == held.checkpointed:
            return
        expires = _now_ms() + int(self.config.lease_duration * 1000)
        stored = await self._table.checkpoint(held.lease, held.position, expires_at_ms=expires)
        self._notice_handoff(held, stored)
        held.checkpointed = held.position
        held.expires_at_ms = expires
        held.renewed_at = time.monotonic()
        self._counts["checkpoints"] += 1

    async def _pause(self, held: _Held, seconds: float) -> bool:
        """Sleep up to `seconds` unless the shard is drained; True when not drained."""
        if seconds > 0:
            with anyio.move_on_after(seconds):
                await held.drain.wait()
        return not held.drain.is_set()

    def _note_lag(self, shard_id: str, page: RecordsPage) -> None:
        if page.millis_behind is not None:
            lag = page.millis_behind
        elif page.messages and page.messages[-1].approximate_arrival is not None:
            arrival = page.messages[-1].approximate_arrival
            lag = max(0, int((time.time() - arrival) * 1000))
        elif not page.messages:
            lag = 0
        else:
            return
        self._lag[shard_id] = lag
        self._metrics.observe_lag(lag / 1000)

    async def _process(self, held: _Held, messages: Sequence[Message]) -> None:
        """Hand `messages` to the handler until all are done; advance `held.position`."""
        config = self.config
        self._counts["records_received"] += len(messages)
        self._metrics.count(Metric.RECEIVED, len(messages))
        self._metrics.observe_batch_size(len(messages))
        pending = list(messages)
        window = len(pending)
        head_attempts = 0
        failures = 0
        while pending and not held.lost:
            batch = pending[:window]
            result: BatchResult | None = None
            error: str | None = None
            self._counts["handler_calls"] += 1
            started = time.perf_counter()
            try:
                result = await self._handler(batch)
            except Exception as exc:  # a handler bug must not stop the shard
                error = f"{type(exc).__name__}: {exc}"
                if len(batch) > 1:  # bisecting: the traceback comes once the record is alone
                    self._log.warning("handler raised; halving the batch",
                                      shard=held.lease.shard_id, batch_size=len(batch),
                                      error=error)
                else:
                    self._log.exception("handler raised", shard=held.lease.shard_id,
                                        sequence_number=batch[0].sequence)
            self._metrics.observe_latency(time.perf_counter() - started)
            settlement = settle_batch(
                batch, result, head_attempts=head_attempts, max_attempts=config.max_attempts,
                handler_error=error,
            )
            if result is not None:
                self._count_outcomes(batch[: settlement.completed], result)
            if settlement.dead_letters and not await self._dead_letter(
                held, settlement.dead_letters
            ):
                return  # drained while the failure queue was unreachable
            if settlement.completed:
                held.position = settlement.checkpoint
                pending = pending[settlement.completed:]
            head_attempts = settlement.head_attempts
            window = max(1, min(settlement.window, len(pending)))
            if settlement.failed:
                self._metrics.count(Metric.FAILED)
            if settlement.retry:
                failures += 1
                self._counts["records_retried"] += 1
                self._metrics.count(Metric.RETRIED)
                await self._checkpoint(held)
                delay = backoff_delay(failures, base=config.retry_backoff,
                                      cap=config.retry_backoff_max)
                if not await self._pause(held, delay):
                    return
            else:
                failures = 0

    def _count_outcomes(self, done: Sequence[Message], result: BatchResult) -> None:
        for message in done:
            outcome = result.outcomes.get(message.id)
            if outcome == Outcome.SUCCEEDED:
                self._counts["records_succeeded"] += 1
                self._metrics.count(Metric.SUCCEEDED)
            elif outcome == Outcome.DUPLICATE:
                self._counts["records_duplicate"] += 1
                self._metrics.count(Metric.DUPLICATES_SKIPPED)

    async def _dead_letter(self, held: _Held, dead: Sequence[FailedRecord]) -> bool:
        """Send `dead` to the failure queue (retrying until it succeeds or the shard is
        drained). True when they are safely away."""
        shard_id = held.lease.shard_id
        for letter in dead:
            self._log.error(
                "record dead-lettered", shard=shard_id, sequence_number=letter.message.sequence,
                partition_key=letter.message.group_id, reason=letter.reason,
                attempts=letter.attempts, failure_queue=self.config.failure_queue_url,
            )
        if self.config.failure_queue_url is None:
            self._counts["records_dead_lettered"] += len(dead)
            self._metrics.count(Metric.DEAD_LETTERED, len(dead))
            return True
        remaining = list(dead)
        failures = 0
        while remaining:
            try:
                remaining = await self._send_failures(shard_id, remaining)
            except RetryableError as exc:
                self._log.warning("failure queue unavailable", shard=shard_id, error=str(exc))
            if not remaining:
                break
            failures += 1
            delay = backoff_delay(failures, base=self.config.retry_backoff,
                                  cap=self.config.retry_backoff_max)
            if not await self._pause(held, delay):
                return False
        self._counts["records_dead_lettered"] += len(dead)
        self._metrics.count(Metric.DEAD_LETTERED, len(dead))
        return True

    async def _send_failures(self, shard_id: str, dead: list[FailedRecord]) -> list[FailedRecord]:
        """One SendMessageBatch per 10 records; returns those SQS did not accept."""
        sqs = await self._aws.client("sqs")
        failed: list[FailedRecord] = []
        for start in range(0, len(dead), 10):
            chunk = dead[start:start + 10]
            entries = [
                {"Id": str(index), "MessageBody": self._failure_body(shard_id, letter)}
                for index, letter in enumerate(chunk)
            ]
            with aws_errors():
                response = await sqs.send_message_batch(
                    QueueUrl=self.config.failure_queue_url, Entries=entries
                )
            failed.extend(chunk[int(entry["Id"])] for entry in response.get("Failed", []))
        return failed

    def _failure_body(self, shard_id: str, letter: FailedRecord) -> str:
        message = letter.message
        document: dict[str, Any] = {
            "source": str(self._source.kind),
            "stream": self._source.name,
            "application": self.config.application,
            "shard_id": shard_id,
            "sequence_number": message.sequence,
            "partition_key": message.group_id,
            "reason": letter.reason[:2_000],
            "attempts": letter.attempts,
            "approximate_arrival": message.approximate_arrival,
            "worker": self.worker_id,
            "body": message.body,
        }
        return fit_failure_message(document, max_bytes=_FAILURE_MESSAGE_BYTES)
