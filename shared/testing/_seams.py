"""In-memory implementations of the framework's narrow seams, for tests without AWS.

Each is `Memory<the seam>` and records what crossed it:

- `MemoryBatchHandler`: a `shared.consumers.BatchHandler` (what every consumer feeds);
- `MemoryDeliveryControl`: a `shared.consumers.DeliveryControl` (what a host lets a running
  handler do);
- `MemoryShardSource`: a `shared.consumers.streams.ShardSource` (one streaming service);
- `MemoryEventBus`: the PutEvents seam of `shared.outbox.Relay` (`send=`, a `SendEntries`);
- `MemoryConsumer`: a `shared.hosts.Consumer` (what a worker host runs and stops).

A service's own seams (a mailer, a payment provider, a device store) have their fakes in the
service; these are the framework's.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from shared.consumers import BatchResult, Message, Outcome, SourceKind
from shared.consumers.streams import InitialPosition, RecordsPage, ShardInfo

if TYPE_CHECKING:
    from shared.consumers import BatchHandler, DeliveryControl
    from shared.consumers.streams import ShardSource
    from shared.hosts import Consumer
    from shared.outbox import SendEntries

__all__ = [
    "MemoryBatchHandler",
    "MemoryConsumer",
    "MemoryDeliveryControl",
    "MemoryEventBus",
    "MemoryShardSource",
]


class MemoryBatchHandler:
    """A `BatchHandler` that keeps what it is given and succeeds, in order, as a stream
    handler should: a message whose body is a key of `retry` gets RETRY with that reason, and
    the messages after it in the batch are left without an outcome (not attempted).

    `calls` holds every batch as given; `handled` every message that succeeded, in order."""

    def __init__(self, *, retry: Mapping[str, str] | None = None) -> None:
        self.retry = dict(retry or {})
        self.calls: list[list[Message]] = []
        self.handled: list[Message] = []

    async def __call__(self, batch: Sequence[Message]) -> BatchResult:
        self.calls.append(list(batch))
        outcomes: dict[str, Outcome] = {}
        for message in batch:
            reason = self.retry.get(message.body)
            if reason is not None:
                return BatchResult({**outcomes, message.id: Outcome.RETRY}, {message.id: reason})
            self.handled.append(message)
            outcomes[message.id] = Outcome.SUCCEEDED
        return BatchResult(outcomes)

    def bodies(self) -> set[str]:
        """The bodies of the messages handled."""
        return {m.body for m in self.handled}


class MemoryDeliveryControl:
    """A `DeliveryControl` that keeps the heartbeats (`extended`: message id and seconds)
    and the early outcomes (`completed_ids`: message id and outcome) a handler reports."""

    def __init__(self) -> None:
        self.extended: list[tuple[str, float | None]] = []
        self.completed_ids: list[tuple[str, Outcome]] = []

    async def extend(self, message: Message, seconds: float | None = None) -> None:
        self.extended.append((message.id, seconds))

    def completed(
        self, message: Message, outcome: Outcome, reason: str | None, delay: float | None
    ) -> None:
        self.completed_ids.append((message.id, outcome))


class MemoryShardSource:
    """A `ShardSource` over shards in memory with Kinesis' resharding rules: a closed shard
    keeps its records and ends with a null iterator, and new records go to open shards only.
    For what an emulator cannot show, such as the records of one key crossing a reshard.

    Records are put with `put(key, body)`; `route(key)` picks the open shard (default: a
    stable hash of the key over the open shards). `split(parent, children, route)` closes
    `parent` and opens `children`; `expire(shard)` drops a closed shard from the stream (its
    retention passed). Sequence numbers are positions in a shard, from "1".

    Raises ValueError (`shards` empty, a split of a closed or unknown shard, a child that
    exists) and KeyError (a route naming a closed or unknown shard, at `put`).
    """

    def __init__(
        self,
        shards: Sequence[str] = ("s0",),
        *,
        kind: SourceKind = SourceKind.KINESIS,
        name: str = "memory",
        default_limit: int = 4,
    ) -> None:
        if not shards:
            raise ValueError("shards must name at least one shard")
        self.kind = kind
        self.name = name
        self.default_limit = default_limit
        self.records: dict[str, list[tuple[str, str]]] = {s: [] for s in shards}
        self.parents: dict[str, tuple[str, ...]] = {s: () for s in shards}
        self.closed: set[str] = set()
        self.route: Callable[[str], str] = self._hashed

    def _hashed(self, key: str) -> str:
        open_shards = [s for s in self.records if s not in self.closed]
        return open_shards[zlib.crc32(key.encode()) % len(open_shards)]

    def put(self, key: str, body: str) -> str:
        """Append a record to the shard `route(key)` names; returns that shard."""
        shard = self.route(key)
        if shard in self.closed or shard not in self.records:
            raise KeyError(f"route({key!r}) named {shard!r}, which is not an open shard")
        self.records[shard].append((key, body))
        return shard

    def split(
        self, parent: str, children: Sequence[str], route: Callable[[str], str] | None = None
    ) -> None:
        """Close `parent` and open `children` (its records stay readable); new records go
        where `route` says (default: the hash over the open shards)."""
        if parent not in self.records or parent in self.closed:
            raise ValueError(f"{parent!r} is not an open shard")
        if not children or set(children) & set(self.records):
            raise ValueError(f"children must be new shard ids, got {list(children)!r}")
        self.closed.add(parent)
        for child in children:
            self.records[child] = []
            self.parents[child] = (parent,)
        self.route = route or self._hashed

    def expire(self, shard: str) -> None:
        """`shard` leaves the stream, as a closed shard does once its records are past the
        retention period (its children keep naming it as their parent).

        Raises ValueError when `shard` is open or unknown."""
        if shard not in self.closed or shard not in self.records:
            raise ValueError(f"{shard!r} is not a closed shard of this stream")
        del self.records[shard]

    async def list_shards(self) -> Sequence[ShardInfo]:
        return [
            ShardInfo(
                shard_id=shard, parent_shard_ids=self.parents[shard],
                ending_sequence=str(len(rows)) if shard in self.closed else None,
            )
            for shard, rows in self.records.items()
        ]

    async def get_iterator(
        self, shard_id: str, *, after: str | None, initial: InitialPosition
    ) -> str:
        start = int(after) if after else 0
        if after is None and initial is InitialPosition.LATEST:
            start = len(self.records[shard_id])
        return f"{shard_id}:{start}"

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        position = int(iterator.rsplit(":", 1)[1])
        rows = self.records[shard_id][position:position + limit]
        messages = [
            Message(id=str(position + i + 1), body=body, source=self.kind,
                    source_name=shard_id, group_id=key, sequence=str(position + i + 1))
            for i, (key, body) in enumerate(rows)
        ]
        end = position + len(rows)
        done = shard_id in self.closed and end == len(self.records[shard_id])
        return RecordsPage(messages=messages, next_iterator=None if done else f"{shard_id}:{end}")


class MemoryEventBus:
    """The PutEvents seam (`SendEntries`) in memory: accepts the entries and keeps their
    event ids (`published`, in order), except that an entry whose envelope id has codes in
    `failures` fails with the next of them (`ErrorCode`, as EventBridge answers a failed
    entry). `calls` holds the event ids of every request."""

    def __init__(self, failures: Mapping[str, Sequence[str]] | None = None) -> None:
        self.failures = {event_id: list(codes) for event_id, codes in (failures or {}).items()}
        self.calls: list[list[str]] = []
        self.published: list[str] = []

    async def __call__(self, entries: list[dict[str, Any]]) -> Sequence[Mapping[str, Any]]:
        ids = [str(json.loads(entry["Detail"])["id"]) for entry in entries]
        self.calls.append(ids)
        results: list[Mapping[str, Any]] = []
        for event_id in ids:
            codes = self.failures.get(event_id)
            if codes:
                results.append({"ErrorCode": codes.pop(0), "ErrorMessage": "scripted"})
            else:
                self.published.append(event_id)
                results.append({"EventId": f"eb-{event_id}"})
        return results


class MemoryConsumer:
    """A `shared.hosts.Consumer`: `run` reports started and returns once `stop()` was
    called; `stops` counts the calls."""

    def __init__(self) -> None:
        self.stops = 0
        self._stopped: anyio.Event | None = None  # made by run(): an Event needs a loop

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._stopped = anyio.Event()
        if self.stops:
            self._stopped.set()
        task_status.started()
        await self._stopped.wait()

    def stop(self) -> None:
        self.stops += 1
        if self._stopped is not None:
            self._stopped.set()


if TYPE_CHECKING:  # mypy checks that each fits the seam it stands in for
    _handler: BatchHandler = MemoryBatchHandler()
    _control: DeliveryControl = MemoryDeliveryControl()
    _source: ShardSource = MemoryShardSource()
    _bus: SendEntries = MemoryEventBus()
    _consumer: Consumer = MemoryConsumer()
