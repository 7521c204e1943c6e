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
    shard task    per held lease (`_shard.ShardTask`): iterator from the checkpoint ->
                  GetRecords(limit) -> handler -> settle -> failure queue -> checkpoint; idle
                  backoff on an empty read; SHARD_END checkpoint + release at the end of a
                  closed shard
"""

from __future__ import annotations

import enum
import os
import socket
import time
import uuid
from collections import Counter

import anyio
import anyio.abc
import structlog

from shared.aws import AwsClients
from shared.consumers._errors import ConsumerError
from shared.consumers._message import BatchHandler
from shared.consumers.streams._config import StreamConsumerConfig, StreamConsumerStatistics
from shared.consumers.streams._lease_decisions import Lease, parents_first, plan_leases
from shared.consumers.streams._leases import LeaseLostError, LeaseTable
from shared.consumers.streams._shard import HeldLease, ShardShared, ShardTask, epoch_ms
from shared.consumers.streams._source import ShardInfo, ShardSource
from shared.errors import PermanentError, RetryableError
from shared.metrics import ConsumerMetrics
from shared.metrics import consumer as consumer_metrics

__all__ = ["StreamConsumer", "default_worker_id"]

log = structlog.get_logger("shared.consumers.stream")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class StreamConsumer:
    """Consumes every shard of one stream through `source`, sharing the shards with the other
    workers of the same `config.application`.

        consumer = KinesisConsumer(aws, handler, stream="telemetry", config=config)
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)   # returns after the first lease round
            ...
            consumer.stop()                # finish in-flight batches, checkpoint, release

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
        self._held: dict[str, HeldLease] = {}
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
        self._shared = ShardShared(
            aws=aws, source=source, handler=handler, table=self._table, config=config,
            limit=self._limit, worker_id=self.worker_id, counts=self._counts, lag=self._lag,
            metrics=self._metrics, log=self._log, shard=self._shard, lose=self._lose,
            notice_handoff=self._notice_handoff,
            shard_ended=lambda: self._request(sync=True, rebalance=True),
            finished=self._finished,
        )

    # -- public ---------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until `stop()` (or cancellation). Reports started (for
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

    def stop(self) -> None:
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
        now_ms = epoch_ms()
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
            expires = epoch_ms() + int(self.config.lease_duration * 1000)
            taken = await self._table.take(lease, owner=self.worker_id, expires_at_ms=expires)
            if taken is None:
                continue
            self._counts["leases_stolen" if stolen else "leases_taken"] += 1
            self._log.info(
                "lease stolen" if stolen else "lease taken", shard=lease.shard_id,
                previous_owner=lease.owner, checkpoint=taken.checkpoint, target=plan.target,
                workers=plan.live_workers,
            )
            held = HeldLease(lease=taken, expires_at_ms=expires, renewed_at=time.monotonic())
            self._held[taken.shard_id] = held
            tg.start_soon(ShardTask(held, self._shared).run, name=f"shard {taken.shard_id}")

    async def _renew_due(self, renew_every: float) -> None:
        now = time.monotonic()
        due = [
            h for h in self._held.values()
            if not h.lost and not h.ended and not h.releasing
            and now - h.renewed_at >= renew_every * 0.9
        ]
        if not due:
            return

        async def renew(held: HeldLease) -> None:
            expires = epoch_ms() + int(self.config.lease_duration * 1000)
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

    def _notice_handoff(self, held: HeldLease, stored: Lease) -> None:
        """Another worker asked for this lease: finish the in-flight batch, checkpoint and
        release it (the shard task's hand-back does that once drained)."""
        if stored.handoff_to is None or stored.handoff_to == self.worker_id:
            return
        if held.handoff_to is None and not held.lost:
            held.handoff_to = stored.handoff_to
            held.drain.set()
            self._log.info("handing lease over", shard=held.lease.shard_id, to=stored.handoff_to)

    def _shard(self, shard_id: str) -> ShardInfo | None:
        return self._shards.get(shard_id)

    def _finished(self, held: HeldLease) -> None:
        self._held.pop(held.lease.shard_id, None)
        self._lag.pop(held.lease.shard_id, None)
        self._wake.set()

    def _lose(self, held: HeldLease, why: str) -> None:
        if held.lost:
            return
        held.lost = True
        held.drain.set()
        self._counts["leases_lost"] += 1
        self._log.warning("lease lost", shard=held.lease.shard_id, why=why)
