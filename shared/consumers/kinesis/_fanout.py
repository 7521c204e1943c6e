"""Kinesis enhanced fan-out for a reader that needs every record of a stream, now: a
*broadcast* reader (each process sees every record; a consumer group would split them).

    async with fan_out_consumer(aws, stream_arn, name="dash-task-1f2e") as consumer:
        reader = KinesisFanOut(aws, consumer, on_records=view.apply_records)
        async with anyio.create_task_group() as tg:
            await tg.start(reader.run)       # every open shard subscribed from LATEST

- `fan_out_consumer`: registers a consumer of the stream for the block (RegisterStreamConsumer,
  waits until ACTIVE), deregisters it at the end (shielded, best effort). Each process needs
  its own: a consumer holds one subscription per shard, and a second SubscribeToShard of the
  same consumer and shard takes the first one over.
- `KinesisFanOut`: one SubscribeToShard per shard, renewed from its continuation when AWS
  ends it (every 5 minutes); the children of a shard that ends (ChildShards) are read from
  TRIM_HORIZON; a shard list every `shard_sync_interval` finds shards created otherwise.
  Records are handed to `on_records(shard_id, messages)` in shard order, as `Message`s
  (`message_from_fan_out`). No leases and no checkpoints: the reader starts at LATEST every
  time, so it is for views that are disposable (a dashboard), not for work that must not be
  skipped (that is `KinesisConsumer`).
- `list_fan_out_consumers` / `deregister_fan_out_consumer`: for removing the consumers of
  processes that died without deregistering (the caller decides which, by name).

Why push rather than GetRecords: a shard serves 5 GetRecords a second *shared by every
reader*, and the stream's worker already polls each idle shard 4 times a second, so a
second poller per process would be throttled, and polling every 0.5 s would spend half the
1 s latency budget of the dashboard waiting. A fan-out consumer has its own 2 MB/s per shard
and records arrive about 70 ms after the put (AWS's figure). docs/devices.md has the cost.

Errors: throttling (LimitExceededException), a subscription still held by a previous call
(ResourceInUseException), 5xx and dropped connections are retried with backoff; the
consumer or stream gone (ResourceNotFoundException) and access denied end `run` with
`AwsRequestError`. A failure of `on_records` propagates.
"""

from __future__ import annotations

import contextlib
import datetime
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import structlog

from shared.aws import AwsClients, aws_errors
from shared.consumers._backoff import Backoff
from shared.consumers._message import Message
from shared.consumers.kinesis._poller import KinesisSource
from shared.consumers.kinesis._wire import message_from_fan_out
from shared.errors import AwsRequestError, FleetlineError, RetryableError

__all__ = [
    "FanOutConsumer",
    "FanOutSettings",
    "FanOutStatistics",
    "KinesisFanOut",
    "RecordsCallback",
    "deregister_fan_out_consumer",
    "fan_out_consumer",
    "list_fan_out_consumers",
    "stream_arn",
]

log = structlog.get_logger("shared.consumers.kinesis.fanout")

RecordsCallback = Callable[[str, Sequence[Message]], None]
"""`on_records(shard_id, messages)`: one event's records of one shard, in order."""

_IN_USE: Final = "ResourceInUseException"
_NOT_FOUND: Final = "ResourceNotFoundException"
_LATEST: Final = {"Type": "LATEST"}
_TRIM_HORIZON: Final = {"Type": "TRIM_HORIZON"}


@dataclass(frozen=True, kw_only=True)
class FanOutConsumer:
    """A registered enhanced fan-out consumer of `stream_arn`. `created` in epoch seconds."""

    name: str
    arn: str
    stream_arn: str
    status: str = "ACTIVE"
    created: float = 0.0


@dataclass(frozen=True, kw_only=True)
class FanOutSettings:
    """How a `KinesisFanOut` reads.

    shard_sync_interval: seconds between shard lists (new shards not announced as a child).
    retry_backoff / retry_backoff_max: exponential backoff with full jitter after a failed
                         subscription.
    active_timeout:      how long `fan_out_consumer` waits for a new consumer to be ACTIVE.

    Raises ValueError naming a field that is not positive, or when retry_backoff_max is
    below retry_backoff.
    """

    shard_sync_interval: float = 60.0
    retry_backoff: float = 0.5
    retry_backoff_max: float = 10.0
    active_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("shard_sync_interval", "retry_backoff", "retry_backoff_max",
                     "active_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.retry_backoff_max < self.retry_backoff:
            raise ValueError(f"retry_backoff_max ({self.retry_backoff_max}) must be at least "
                             f"retry_backoff ({self.retry_backoff})")


@dataclass(frozen=True, kw_only=True)
class FanOutStatistics:
    """What a `KinesisFanOut` did since it started."""

    shards: tuple[str, ...]
    records: int = 0
    events: int = 0
    subscriptions: int = 0
    retries: int = 0
    millis_behind: dict[str, int] = field(default_factory=dict)


async def stream_arn(aws: AwsClients, stream: str) -> str:
    """The ARN of `stream` (a name or an ARN). Raises AwsRequestError / AwsUnavailableError."""
    if stream.startswith("arn:"):
        return stream
    client = await aws.client("kinesis")
    with aws_errors():
        summary = await client.describe_stream_summary(StreamName=stream)
    return str(summary["StreamDescriptionSummary"]["StreamARN"])


def _consumer(data: dict[str, Any], stream: str) -> FanOutConsumer:
    created = data.get("ConsumerCreationTimestamp")
    return FanOutConsumer(
        name=str(data["ConsumerName"]), arn=str(data["ConsumerARN"]), stream_arn=stream,
        status=str(data.get("ConsumerStatus", "ACTIVE")),
        created=(created.timestamp() if isinstance(created, datetime.datetime)
                 else float(created or 0)))


async def list_fan_out_consumers(aws: AwsClients, stream: str) -> list[FanOutConsumer]:
    """Every consumer registered on `stream` (ARN). Raises AwsRequestError /
    AwsUnavailableError."""
    client = await aws.client("kinesis")
    found: list[FanOutConsumer] = []
    kwargs: dict[str, Any] = {"StreamARN": stream}
    while True:
        with aws_errors():
            page = await client.list_stream_consumers(**kwargs)
        found.extend(_consumer(c, stream) for c in page.get("Consumers", []))
        token = page.get("NextToken")
        if not token:
            return found
        kwargs = {"StreamARN": stream, "NextToken": token}


async def deregister_fan_out_consumer(aws: AwsClients, consumer_arn: str, *,
                                      reason: str) -> None:
    """Deregister a consumer (by ARN). Already gone is fine; any other failure is logged."""
    client = await aws.client("kinesis")
    try:
        with aws_errors():
            await client.deregister_stream_consumer(ConsumerARN=consumer_arn)
        log.info("fan-out consumer deregistered", consumer=consumer_arn, reason=reason)
    except FleetlineError as exc:
        if isinstance(exc, AwsRequestError) and exc.code == _NOT_FOUND:
            return
        log.warning("fan-out consumer deregister failed", consumer=consumer_arn,
                    reason=reason, error=str(exc))


async def _wait_active(aws: AwsClients, consumer: FanOutConsumer, *,
                       within: float) -> FanOutConsumer:
    client = await aws.client("kinesis")
    deadline = time.monotonic() + within
    delay = 0.2
    while consumer.status != "ACTIVE":
        if time.monotonic() > deadline:
            raise AwsRequestError(f"consumer {consumer.name} not ACTIVE within {within} s "
                                  f"(still {consumer.status})", code="ConsumerNotActive")
        await anyio.sleep(delay)
        delay = min(delay * 2, 2.0)
        with aws_errors():
            described = await client.describe_stream_consumer(ConsumerARN=consumer.arn)
        consumer = _consumer(described["ConsumerDescription"], consumer.stream_arn)
    return consumer


@contextlib.asynccontextmanager
async def fan_out_consumer(aws: AwsClients, stream: str, *, name: str,
                           settings: FanOutSettings | None = None
                           ) -> AsyncIterator[FanOutConsumer]:
    """A consumer named `name` registered on `stream` (ARN) for the duration of the block,
    ACTIVE on entry; deregistered on exit (shielded from cancellation, best effort: logged).
    A consumer of that name already registered (a restart with the same name) is reused.

    Raises:
        AwsRequestError: registration refused (limit of consumers per stream, access) or
            not ACTIVE within `settings.active_timeout`.
        AwsUnavailableError: Kinesis could not be reached.
    """
    settings = settings or FanOutSettings()
    client = await aws.client("kinesis")
    try:
        with aws_errors():
            registered = await client.register_stream_consumer(StreamARN=stream,
                                                               ConsumerName=name)
        consumer = _consumer(registered["Consumer"], stream)
    except AwsRequestError as exc:
        if exc.code != _IN_USE:
            raise
        with aws_errors():
            described = await client.describe_stream_consumer(StreamARN=stream,
                                                              ConsumerName=name)
        consumer = _consumer(described["ConsumerDescription"], stream)
    try:
        consumer = await _wait_active(aws, consumer, within=settings.active_timeout)
        log.info("fan-out consumer registered", consumer=consumer.arn)
        yield consumer
    finally:
        with anyio.CancelScope(shield=True):
            await deregister_fan_out_consumer(aws, consumer.arn, reason="block ended")


class KinesisFanOut:
    """Reads every shard of the consumer's stream through that consumer (see the module
    docstring); `run()` is the task."""

    def __init__(self, aws: AwsClients, consumer: FanOutConsumer, *,
                 on_records: RecordsCallback, settings: FanOutSettings | None = None) -> None:
        self._aws = aws
        self._consumer = consumer
        self._on_records = on_records
        self._settings = settings or FanOutSettings()
        self._backoff = Backoff(base=self._settings.retry_backoff,
                                cap=self._settings.retry_backoff_max)
        self._source = KinesisSource(aws, consumer.stream_arn)
        self._shards: dict[str, anyio.Event] = {}  # shard id -> first subscription made
        self._ended: set[str] = set()
        self._records = 0
        self._events = 0
        self._subscriptions = 0
        self._retries = 0
        self._behind: dict[str, int] = {}

    def statistics(self) -> FanOutStatistics:
        """What the reader did so far; `shards` are the ones it reads now."""
        return FanOutStatistics(
            shards=tuple(s for s in self._shards if s not in self._ended),
            records=self._records, events=self._events, subscriptions=self._subscriptions,
            retries=self._retries, millis_behind=dict(self._behind))

    async def run(self, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to every open shard from LATEST, and reports started once each has its
        first subscription (records put after that are seen); then read until cancelled.

        Raises AwsRequestError (consumer or stream gone, access denied) and whatever
        `on_records` raises.
        """
        try:
            await self._run(task_status)
        except BaseExceptionGroup as group:
            # Surface a lone AwsRequestError (consumer or stream gone) as itself.
            rest = group.split(AwsRequestError)[1]
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup) and rest is None:
                first = first.exceptions[0]
            if first is group:
                raise
            raise first from group

    async def _run(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            shards = await self._open_shards()
            for shard_id in shards:
                self._start(tg, shard_id, _LATEST)
            for shard_id in shards:
                await self._shards[shard_id].wait()
            task_status.started()
            while True:
                await anyio.sleep(self._settings.shard_sync_interval)
                for shard_id in await self._open_shards():
                    if shard_id not in self._shards:  # created since: all of it is new
                        self._start(tg, shard_id, _TRIM_HORIZON)

    async def _open_shards(self) -> list[str]:
        failures = 0
        while True:
            try:
                return [s.shard_id for s in await self._source.list_shards()
                        if s.ending_sequence is None]
            except RetryableError as exc:
                failures += 1
                await self._back_off(failures, "list shards failed", error=str(exc))

    def _start(self, tg: anyio.abc.TaskGroup, shard_id: str, start: dict[str, str]) -> None:
        if shard_id in self._shards:
            return
        self._shards[shard_id] = anyio.Event()
        tg.start_soon(self._read_shard, tg, shard_id, start)

    async def _back_off(self, failures: int, what: str, **fields: Any) -> None:
        self._retries += 1
        delay = self._backoff.delay(failures, random)
        log.warning(what, delay=round(delay, 3), **fields)
        await anyio.sleep(delay)

    async def _read_shard(self, tg: anyio.abc.TaskGroup, shard_id: str,
                          start: dict[str, str]) -> None:
        client = await self._aws.client("kinesis")
        subscribed = self._shards[shard_id]
        failures = 0
        while True:
            try:
                with aws_errors():
                    response = await client.subscribe_to_shard(
                        ConsumerARN=self._consumer.arn, ShardId=shard_id,
                        StartingPosition=start)
                self._subscriptions += 1
                subscribed.set()
                failures = 0
                events = response["EventStream"]
                with aws_errors(), contextlib.closing(events):
                    async for event in events:
                        data = event.get("SubscribeToShardEvent")
                        if data is None:
                            continue
                        self._deliver(shard_id, data)
                        continuation = data.get("ContinuationSequenceNumber")
                        if continuation:
                            start = {"Type": "AFTER_SEQUENCE_NUMBER",
                                     "SequenceNumber": str(continuation)}
                        children = data.get("ChildShards") or ()
                        if children:  # the shard ended: its children take over from here
                            self._ended.add(shard_id)
                            self._behind.pop(shard_id, None)
                            for child in children:
                                self._start(tg, str(child["ShardId"]), _TRIM_HORIZON)
                            return
                # The subscription ended (AWS ends each after 5 minutes): subscribe again
                # from the continuation.
            except AwsRequestError as exc:
                if exc.code != _IN_USE:
                    raise
                failures += 1  # the previous subscription is still held: it lapses soon
                await self._back_off(failures, "shard subscription in use", shard=shard_id)
            except (RetryableError, aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                await self._back_off(failures, "shard subscription failed", shard=shard_id,
                                     error=f"{type(exc).__name__}: {exc}")

    def _deliver(self, shard_id: str, event: dict[str, Any]) -> None:
        self._events += 1
        self._behind[shard_id] = int(event.get("MillisBehindLatest") or 0)
        records = event.get("Records") or ()
        if not records:
            return
        stream = self._consumer.stream_arn
        messages = [message_from_fan_out(r, stream=stream, shard_id=shard_id) for r in records]
        self._records += len(messages)
        self._on_records(shard_id, messages)
