"""Kinesis consumer against the emulator: leases shared by workers, crash takeover, failure
queue, resharding (parents before children), requests per 1,000 records."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog.testing

from shared.aws import AwsClients
from shared.consumers._errors import ConsumerError
from shared.consumers._message import BatchResult, Message, Outcome, SourceKind
from shared.consumers.kinesis import KinesisConsumer, KinesisSource
from shared.consumers.streams import (
    ExpiredIteratorError,
    RecordsPage,
    StreamConsumer,
    StreamConsumerConfig,
    create_lease_table,
)
from shared.consumers.streams._lease_decisions import SHARD_END
from shared.consumers.streams._leases import LeaseLostError, LeaseTable
from shared.errors import AwsUnavailableError
from shared.metrics import Metrics
from shared.testing import MemoryBatchHandler, MemoryShardSource

pytestmark = pytest.mark.emulator

LEASES = "leases"
ROOT = Path(__file__).resolve().parents[2]


def fast_config(**overrides: object) -> StreamConsumerConfig:
    """Short durations so each test takes seconds."""
    settings: dict[str, object] = {
        "lease_table": LEASES,
        "application": "telemetry",
        "lease_duration": 3.0,  # single-worker tests never wait for an expiry
        "renew_interval": 0.3,
        "take_interval": 0.3,
        "shard_sync_interval": 0.5,
        "idle_backoff": 0.1,
        "retry_backoff": 0.02,
        "retry_backoff_max": 0.1,
        "max_attempts": 3,
        "shutdown_grace": 5.0,
    }
    settings.update(overrides)
    return StreamConsumerConfig(**settings)  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what}")


async def make_stream(aws: AwsClients, name: str, shards: int) -> None:
    kinesis = await aws.client("kinesis")
    await kinesis.create_stream(StreamName=name, ShardCount=shards)
    waiter = kinesis.get_waiter("stream_exists")
    await waiter.wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    await create_lease_table(aws, LEASES)


async def put(aws: AwsClients, stream: str, records: Sequence[tuple[str, str]]) -> dict[str, str]:
    """PutRecords (partition key, body); returns body -> shard id."""
    kinesis = await aws.client("kinesis")
    placed: dict[str, str] = {}
    for start in range(0, len(records), 500):
        chunk = records[start:start + 500]
        response = await kinesis.put_records(
            StreamName=stream,
            Records=[{"PartitionKey": key, "Data": body.encode()} for key, body in chunk],
        )
        assert response.get("FailedRecordCount", 0) == 0
        for (_, body), entry in zip(chunk, response["Records"], strict=True):
            placed[body] = entry["ShardId"]
    return placed


async def test_consumes_every_record_with_few_requests(aws: AwsClients) -> None:
    await make_stream(aws, "busy", 2)
    records = [(f"device-{i % 50}", f"r{i}") for i in range(4000)]
    await put(aws, "busy", records)
    handler = MemoryBatchHandler()
    cpu_started = time.process_time()
    async with AwsClients() as own, anyio.create_task_group() as tg:
        consumer = KinesisConsumer(own, handler, stream="busy", config=fast_config())
        await tg.start(consumer.run)

        async def all_seen() -> bool:
            return len(handler.handled) >= len(records)

        await wait_for(all_seen, 20, "every record handled")
        consumer.stop()
    cpu_us = (time.process_time() - cpu_started) * 1e6 / len(records)
    requests = own.counter.snapshot()
    per_thousand = own.counter.total * 1000 / len(records)
    print(f"\nKinesis consumer: {own.counter.total} AWS requests for {len(records)} records "
          f"= {per_thousand:.1f} per 1,000 records, {cpu_us:.0f} us client CPU per record "
          f"(start-up and shutdown included); {requests}")
    assert per_thousand < 10
    stats = consumer.statistics()
    assert stats.records_succeeded == len(records)
    assert stats.records_received == len(records)
    # In order per partition key (one shard per key): bodies of each key are increasing.
    by_key: dict[str, list[int]] = {}
    for message in handler.handled:
        assert message.source is SourceKind.KINESIS
        assert message.sequence == message.id
        assert message.approximate_arrival is not None
        by_key.setdefault(str(message.group_id), []).append(int(message.body[1:]))
    assert all(values == sorted(values) for values in by_key.values())
    # Released with a checkpoint at the last record of each shard.
    leases = await LeaseTable(aws, LEASES, "telemetry").list()
    assert {lease.owner for lease in leases} == {None}
    last = {m.source_name: m.sequence for m in handler.handled}
    assert {lease.shard_id: lease.checkpoint for lease in leases} == last


async def test_bad_record_goes_to_failure_queue_and_shard_moves_on(aws: AwsClients) -> None:
    await make_stream(aws, "bad", 1)
    sqs = await aws.client("sqs")
    queue_url = (await sqs.create_queue(QueueName="failures"))["QueueUrl"]
    handler = MemoryBatchHandler(retry={"poison": "poison payload"})
    placed = await put(aws, "bad", [("dev-1", "a"), ("dev-1", "poison"), ("dev-1", "b")])
    metrics = Metrics(service="test", stream=io.StringIO()).consumer("telemetry")
    async with anyio.create_task_group() as tg:
        consumer = KinesisConsumer(
            aws, handler, stream="bad", config=fast_config(failure_queue_url=queue_url),
            metrics=metrics,
        )
        await tg.start(consumer.run)
        await put(aws, "bad", [("dev-1", "c")])

        async def later_records_done() -> bool:
            return handler.bodies() >= {"a", "b", "c"}

        await wait_for(later_records_done, 10, "records after the poison one")
        consumer.stop()
    poison_calls = [m for call in handler.calls for m in call if m.body == "poison"]
    assert len(poison_calls) == 3  # max_attempts
    received = await sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
    bodies = [json.loads(m["Body"]) for m in received["Messages"]]
    assert len(bodies) == 1
    failure = bodies[0]
    assert failure["shard_id"] == placed["poison"]
    assert failure["sequence_number"] == poison_calls[0].sequence
    assert failure["partition_key"] == "dev-1"
    assert failure["body"] == "poison"
    assert "poison payload" in failure["reason"]
    assert failure["attempts"] == 3
    assert consumer.statistics().records_dead_lettered == 1
    emitted = metrics.statistics()
    assert emitted.received == 4
    assert emitted.succeeded == 3
    assert emitted.dead_lettered == 1
    assert emitted.failed == 3  # three failed attempts of the poison record
    assert emitted.retried == 2  # two of them were retried
    assert emitted.lag_seconds_last is not None
    # Order held: a and b came before c, and b after the poison record's attempts.
    order = [m.body for m in handler.handled]
    assert order.index("a") < order.index("b") < order.index("c")


async def test_handler_exception_bisects_to_the_poison_record(aws: AwsClients) -> None:
    await make_stream(aws, "raises", 1)
    sqs = await aws.client("sqs")
    queue_url = (await sqs.create_queue(QueueName="failures"))["QueueUrl"]
    handled: list[str] = []

    async def handler(batch: Sequence[Message]) -> BatchResult:
        if any(m.body == "boom" for m in batch):
            raise ValueError("cannot parse boom")
        handled.extend(m.body for m in batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    bodies = [f"ok{i}" for i in range(6)]
    await put(aws, "raises", [("k", b) for b in [*bodies[:3], "boom", *bodies[3:]]])
    # Captured, not rendered: the console renderer spends a second per pretty traceback.
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            consumer = KinesisConsumer(
                aws, handler, stream="raises", config=fast_config(failure_queue_url=queue_url)
            )
            await tg.start(consumer.run)

            async def done() -> bool:
                return set(handled) == set(bodies)

            await wait_for(done, 10, "every good record around the raising one")
            consumer.stop()
    raised = [e for e in logs if e["event"] == "handler raised"]
    assert len(raised) == 3  # one traceback per attempt of the isolated record only
    assert {e["sequence_number"] for e in raised} == {"4"}
    assert any(e["event"] == "record dead-lettered" for e in logs)
    assert handled == bodies  # each good record once, in order: bisection blamed only boom
    received = await sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
    [failure] = [json.loads(m["Body"]) for m in received["Messages"]]
    assert failure["body"] == "boom"
    assert "ValueError: cannot parse boom" in failure["reason"]


async def lease_owners(aws: AwsClients) -> dict[str, str | None]:
    leases = await LeaseTable(aws, LEASES, "telemetry").list()
    return {lease.shard_id: lease.owner for lease in leases}


async def test_two_workers_share_shards_and_survive_a_cancelled_worker(aws: AwsClients) -> None:
    """Two consumers in one process: 2/2 split; one shut down cleanly hands its shards over
    at once (no expiry wait)."""
    await make_stream(aws, "shared", 4)
    first, second = MemoryBatchHandler(), MemoryBatchHandler()
    async with anyio.create_task_group() as tg:
        a = KinesisConsumer(aws, first, stream="shared", config=fast_config(worker_id="A"))
        await tg.start(a.run)
        assert len(a.held_shards) == 4
        async with anyio.create_task_group() as inner:
            b = KinesisConsumer(aws, second, stream="shared", config=fast_config(worker_id="B"))
            await inner.start(b.run)

            async def split() -> bool:
                owners = list((await lease_owners(aws)).values())
                return sorted(owners, key=str) == ["A", "A", "B", "B"]

            await wait_for(split, 10, "a 2/2 split")
            records = [(f"k{i}", f"x{i}") for i in range(200)]
            await put(aws, "shared", records)

            async def handled_all() -> bool:
                return first.bodies() | second.bodies() == {b for _, b in records}

            await wait_for(handled_all, 10, "records on all shards")
            assert first.bodies()
            assert second.bodies()
            b_shards = set(b.held_shards)
            b.stop()
        # B's run has returned: its leases are already free (no owner, expired), so A need
        # not wait for an expiry.
        released = [lease for lease in await LeaseTable(aws, LEASES, "telemetry").list()
                    if lease.shard_id in b_shards]
        assert len(released) == 2
        assert all(lease.owner is None and lease.expires_at_ms == 0 for lease in released)

        async def a_has_all() -> bool:
            return len(a.held_shards) == 4

        await wait_for(a_has_all, 5, "A to take B's released shards")
        more = [(f"k{i}", f"y{i}") for i in range(100)]
        await put(aws, "shared", more)

        async def handled_more() -> bool:
            return {b for _, b in more} <= first.bodies()

        await wait_for(handled_more, 10, "later records by A")
        a.stop()


WORKER = textwrap.dedent(
    """
    import sys, anyio
    from shared.aws import AwsClients
    from shared.consumers._message import BatchResult, Outcome
    from shared.consumers.kinesis import KinesisConsumer
    from shared.consumers.streams import StreamConsumerConfig

    stream, worker, out = sys.argv[1:4]

    async def handler(batch):
        with open(out, "a") as f:
            for m in batch:
                f.write(m.body + "\\n")
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    async def main():
        config = StreamConsumerConfig(
            lease_table="leases", application="telemetry", worker_id=worker,
            lease_duration=1.5, renew_interval=0.3, take_interval=0.3,
            shard_sync_interval=0.5, idle_backoff=0.1)
        async with AwsClients() as aws:
            await KinesisConsumer(aws, handler, stream=stream, config=config).run()

    anyio.run(main)
    """
)


async def test_sigkilled_worker_shards_move_after_expiry_and_nothing_is_skipped(
    aws: AwsClients, tmp_path: Path
) -> None:
    """The issue's test: two workers (one a real process) share four shards 2/2; SIGKILL the
    process; its shards move to the survivor after lease expiry; every record is handled."""
    await make_stream(aws, "fleet", 4)
    survivor = MemoryBatchHandler()
    out = tmp_path / "victim.txt"
    out.touch()
    async with anyio.create_task_group() as tg:
        a = KinesisConsumer(aws, survivor, stream="fleet", config=fast_config(worker_id="A"))
        await tg.start(a.run)
        child = subprocess.Popen(  # noqa: ASYNC220 - a quick fork; the test owns it
            [sys.executable, "-c", WORKER, "fleet", "B", str(out)],
            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            async def split() -> bool:
                assert child.poll() is None, child.stderr.read() if child.stderr else ""
                owners = list((await lease_owners(aws)).values())
                return sorted(owners, key=str) == ["A", "A", "B", "B"]

            await wait_for(split, 20, "a 2/2 split with the worker process")
            first = [(f"dev-{i}", f"p{i}") for i in range(300)]
            await put(aws, "fleet", first)

            def victim_bodies() -> set[str]:
                return set(out.read_text().split())

            async def both_busy() -> bool:
                return survivor.bodies() | victim_bodies() == {b for _, b in first}

            await wait_for(both_busy, 15, "both workers handling their shards")
            assert victim_bodies()
            assert survivor.bodies()
            # Records the victim may never get to: written just before the crash.
            second = [(f"dev-{i}", f"q{i}") for i in range(300)]
            await put(aws, "fleet", second)
            child.send_signal(signal.SIGKILL)
            child.wait(5)
            dead_leases = [lease for lease in await LeaseTable(aws, LEASES, "telemetry").list()
                           if lease.owner == "B"]
            assert len(dead_leases) == 2
            # B can renew no more: these expiries are final.
            expiry_ms = min(lease.expires_at_ms for lease in dead_leases)
            assert len(a.held_shards) == 2 or time.time() * 1000 >= expiry_ms
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)

        async def taken_over() -> bool:
            return len(a.held_shards) == 4

        await wait_for(taken_over, 10, "A to take the dead worker's shards")
        # Not before the dead worker's leases expired (1.5 s after its last renewal).
        assert time.time() * 1000 >= expiry_ms
        third = [(f"dev-{i}", f"z{i}") for i in range(100)]
        await put(aws, "fleet", third)
        everything = {b for _, b in first + second + third}

        async def nothing_skipped() -> bool:
            return survivor.bodies() | victim_bodies() == everything

        await wait_for(nothing_skipped, 15, "every record handled by one of the workers")
        a.stop()
    # Checkpoints cover everything: each lease's checkpoint is its shard's last record.
    kinesis = await aws.client("kinesis")
    leases = {lease.shard_id: lease for lease in await LeaseTable(aws, LEASES, "telemetry").list()}
    for shard_id, lease in leases.items():
        iterator = (await kinesis.get_shard_iterator(
            StreamName="fleet", ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        ))["ShardIterator"]
        records = (await kinesis.get_records(ShardIterator=iterator, Limit=10_000))["Records"]
        assert lease.checkpoint == records[-1]["SequenceNumber"], shard_id
        assert lease.owner is None


class WatchedSource(KinesisSource):
    """The real Kinesis source, noting when each shard is opened and read (test seam)."""

    def __init__(self, aws: AwsClients, stream: str) -> None:
        super().__init__(aws, stream)
        self.events: list[tuple[str, str]] = []  # (operation, shard id), in call order

    async def get_iterator(self, shard_id: str, **kwargs: Any) -> str:
        self.events.append(("open", shard_id))
        return await super().get_iterator(shard_id, **kwargs)

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        page = await super().get_records(shard_id, iterator, limit=limit)
        self.events.append(("read", shard_id))
        return page


async def test_reshard_drains_parents_before_children(aws: AwsClients) -> None:
    """Split 2 -> 4 while a parent still has unprocessed records, then merge 4 -> 2: no child
    shard is opened before every parent has been read to its end (SHARD_END).

    Emulator gap: moto keeps routing PutRecords to a closed parent (it matches the first shard
    whose hash range fits), so children receive no records there; the ordering of child reads
    after parent drains is what this test can and does check."""
    await make_stream(aws, "grow", 2)
    gate = anyio.Event()
    handled: list[Message] = []

    async def handler(batch: Sequence[Message]) -> BatchResult:
        if any(m.body.endswith(":1") for m in batch):
            await gate.wait()  # hold the parents' second wave until the reshard is done
        handled.extend(batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    keys = [f"dev-{i}" for i in range(20)]
    kinesis = await aws.client("kinesis")
    source = WatchedSource(aws, "grow")
    table = LeaseTable(aws, LEASES, "telemetry")
    async with anyio.create_task_group() as tg:
        consumer = StreamConsumer(aws, handler, source, fast_config(shard_sync_interval=0.2))
        await tg.start(consumer.run)
        await put(aws, "grow", [(k, f"{k}:0") for k in keys])
        await put(aws, "grow", [(k, f"{k}:1") for k in keys])
        await kinesis.update_shard_count(
            StreamName="grow", TargetShardCount=4, ScalingType="UNIFORM_SCALING"
        )

        async def children_known() -> bool:
            return len(await table.list()) == 6

        await wait_for(children_known, 5, "child leases created")
        rounds = consumer.statistics().lease_rounds
        await wait_for(
            _async(lambda: consumer.statistics().lease_rounds >= rounds + 4), 5, "lease rounds"
        )
        assert all(s in {"shardId-000000000000", "shardId-000000000001"}
                   for s in consumer.held_shards)  # children wait for their parents
        gate.set()

        async def split_children_running() -> bool:
            return len(consumer.held_shards) == 4 and all(
                s not in {"shardId-000000000000", "shardId-000000000001"}
                for s in consumer.held_shards
            )

        await wait_for(split_children_running, 10, "the four children")
        await kinesis.update_shard_count(
            StreamName="grow", TargetShardCount=2, ScalingType="UNIFORM_SCALING"
        )

        async def all_drained() -> bool:
            leases = await table.list()
            ended = [lease for lease in leases if lease.checkpoint == SHARD_END]
            # Held is not yet read: the order check below needs each merged child opened.
            opened = {shard for operation, shard in source.events if operation == "open"}
            return (len(leases) == 8 and len(ended) == 6 and len(consumer.held_shards) == 2
                    and set(consumer.held_shards) <= opened)

        await wait_for(all_drained, 15, "6 drained parents and 2 merged children, opened")
        consumer.stop()
    shards = (await kinesis.list_shards(StreamName="grow"))["Shards"]
    parents = {
        s["ShardId"]: [p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p]
        for s in shards
    }
    first_open = {}
    last_read = {}
    for index, (operation, shard_id) in enumerate(source.events):
        if operation == "open":
            first_open.setdefault(shard_id, index)
        else:
            last_read[shard_id] = index
    checked = 0
    for child, its_parents in parents.items():
        for parent in its_parents:
            assert last_read[parent] < first_open[child], (parent, child)
            checked += 1
    assert checked == 8  # 4 split children (1 parent each) + 2 merged (2 parents each)
    # Per partition key, order held across the reshard.
    for key in keys:
        assert [m.body for m in handled if m.group_id == key] == [f"{key}:0", f"{key}:1"]


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def test_lost_lease_cannot_checkpoint_or_release(aws: AwsClients) -> None:
    """Fencing: once B took the lease, A's checkpoint and release are refused."""
    await make_stream(aws, "fence", 1)
    table = LeaseTable(aws, LEASES, "telemetry")
    await table.create_missing([("shard-x", ())], existing=[])
    [free] = await table.list()
    now = int(time.time() * 1000)
    held_by_a = await table.take(free, owner="A", expires_at_ms=now + 60_000)
    assert held_by_a is not None
    assert held_by_a.counter == free.counter + 1
    await table.checkpoint(held_by_a, "10", expires_at_ms=now + 60_000)
    assert await table.take(free, owner="B", expires_at_ms=now) is None  # stale snapshot
    [current] = await table.list()
    held_by_b = await table.take(current, owner="B", expires_at_ms=now + 60_000)  # a steal
    assert held_by_b is not None
    with pytest.raises(LeaseLostError):
        await table.checkpoint(held_by_a, "20", expires_at_ms=now + 60_000)
    with pytest.raises(LeaseLostError):
        await table.renew(held_by_a, expires_at_ms=now + 60_000)
    with pytest.raises(LeaseLostError):
        await table.release(held_by_a, checkpoint="20")
    [after] = await table.list()
    assert after.owner == "B"
    assert after.checkpoint == "10"
    await table.release(held_by_b, checkpoint="11")
    [released] = await table.list()
    assert released.owner is None
    assert released.expires_at_ms == 0
    assert released.checkpoint == "11"


async def test_shutdown_finishes_the_in_flight_batch_then_checkpoints_and_releases(
    aws: AwsClients,
) -> None:
    await make_stream(aws, "drain", 1)
    entered, proceed = anyio.Event(), anyio.Event()
    handled: list[Message] = []

    async def slow(batch: Sequence[Message]) -> BatchResult:
        entered.set()
        await proceed.wait()
        handled.extend(batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    await put(aws, "drain", [("k", f"m{i}") for i in range(5)])
    stopped = anyio.Event()
    async with anyio.create_task_group() as tg:
        consumer = KinesisConsumer(aws, slow, stream="drain", config=fast_config())

        async def run() -> None:
            await consumer.run()
            stopped.set()

        tg.start_soon(run)
        with anyio.fail_after(10):
            await entered.wait()
        consumer.stop()
        await anyio.sleep(0.3)  # the in-flight batch is not abandoned while it runs
        assert not stopped.is_set()
        proceed.set()
        with anyio.fail_after(5):
            await stopped.wait()
    assert [m.body for m in handled] == [f"m{i}" for i in range(5)]
    [lease] = await LeaseTable(aws, LEASES, "telemetry").list()
    assert lease.owner is None
    assert lease.checkpoint == handled[-1].sequence


async def test_grace_expiry_cancels_a_stuck_handler_and_still_releases(aws: AwsClients) -> None:
    await make_stream(aws, "stuck", 1)

    async def stuck(batch: Sequence[Message]) -> BatchResult:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    await put(aws, "stuck", [("k", "m0")])
    async with anyio.create_task_group() as tg:
        consumer = KinesisConsumer(aws, stuck, stream="stuck",
                                   config=fast_config(shutdown_grace=0.3))
        await tg.start(consumer.run)
        await wait_for(_async(lambda: consumer.statistics().handler_calls == 1), 5, "a call")
        started = time.monotonic()
        consumer.stop()
    assert time.monotonic() - started < 4  # the 0.3 s grace, not the stuck handler, decided
    [lease] = await LeaseTable(aws, LEASES, "telemetry").list()
    assert lease.owner is None  # handed back at once
    assert lease.checkpoint is None  # nothing was completed


class FlakySource(KinesisSource):
    """The real source, with one expired iterator and one throttle injected into the reads."""

    def __init__(self, aws: AwsClients, stream: str) -> None:
        super().__init__(aws, stream)
        self.reads = 0
        self.opened = 0

    async def get_iterator(self, shard_id: str, **kwargs: Any) -> str:
        self.opened += 1
        return await super().get_iterator(shard_id, **kwargs)

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        self.reads += 1
        if self.reads == 2:
            raise ExpiredIteratorError("Iterator expired")
        if self.reads == 3:
            raise AwsUnavailableError(
                "Rate exceeded", code="ProvisionedThroughputExceededException"
            )
        return await super().get_records(shard_id, iterator, limit=limit)


async def test_expired_iterator_and_throttling_lose_and_repeat_nothing(aws: AwsClients) -> None:
    await make_stream(aws, "flaky", 1)
    handler = MemoryBatchHandler()
    source = FlakySource(aws, "flaky")
    await put(aws, "flaky", [("k", f"a{i}") for i in range(3)])
    async with anyio.create_task_group() as tg:
        consumer = StreamConsumer(aws, handler, source, fast_config(limit=3))
        await tg.start(consumer.run)
        await wait_for(_async(lambda: len(handler.handled) >= 3), 5, "the first page")
        await put(aws, "flaky", [("k", f"b{i}") for i in range(3)])
        await wait_for(_async(lambda: len(handler.handled) >= 6), 10, "records after the faults")
        consumer.stop()
    assert [m.body for m in handler.handled] == [*(f"a{i}" for i in range(3)),
                                                 *(f"b{i}" for i in range(3))]
    assert source.opened == 2  # the expired iterator was replaced from the checkpoint


async def test_order_per_key_holds_across_a_split(aws: AwsClients) -> None:
    """With a source that routes new records to the children (as AWS does), every key's
    records are handled exactly in order across the split: parent drained first."""
    await create_lease_table(aws, LEASES)
    stream = MemoryShardSource()
    handled: list[Message] = []
    slow_parent = anyio.Event()

    async def handler(batch: Sequence[Message]) -> BatchResult:
        if batch[0].source_name == "s0":
            await slow_parent.wait()  # the parent lags behind: children must wait for it
        handled.extend(batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    keys = [f"k{i}" for i in range(6)]
    for value in range(3):
        for key in keys:
            stream.put(key, f"{key}:{value}")
    async with anyio.create_task_group() as tg:
        consumer = StreamConsumer(aws, handler, stream, fast_config(shard_sync_interval=0.2))
        await tg.start(consumer.run)
        stream.split("s0", ("s1", "s2"), route=lambda key: "s1" if int(key[1:]) % 2 else "s2")
        for value in range(3, 6):
            for key in keys:
                stream.put(key, f"{key}:{value}")
        await wait_for(
            _async(lambda: consumer.statistics().lease_rounds >= 4), 5, "lease rounds"
        )
        assert consumer.held_shards == ("s0",)
        slow_parent.set()
        await wait_for(_async(lambda: len(handled) == 36), 10, "all 36 records")
        consumer.stop()
    for key in keys:
        assert [m.body for m in handled if m.group_id == key] == [
            f"{key}:{v}" for v in range(6)
        ]
    table = LeaseTable(aws, LEASES, "telemetry")
    leases = {lease.shard_id: lease for lease in await table.list()}
    assert leases["s0"].checkpoint == SHARD_END
    assert leases["s1"].checkpoint == "9"
    assert leases["s2"].checkpoint == "9"
    # Once the drained parent leaves the stream (retention), its lease is cleaned up and the
    # children carry on.
    stream.expire("s0")
    stream.put("k1", "k1:6")
    seen = len(handled)
    async with anyio.create_task_group() as tg:
        consumer = StreamConsumer(aws, handler, stream, fast_config(shard_sync_interval=0.2))
        await tg.start(consumer.run)
        await wait_for(_async(lambda: len(handled) == seen + 1), 10, "a record after cleanup")
        consumer.stop()
    assert sorted(lease.shard_id for lease in await table.list()) == ["s1", "s2"]


async def test_rebalancing_hands_leases_over_without_duplicates(aws: AwsClients) -> None:
    """A second worker joins while records keep arriving: A hands two shards over (finishes
    its batch, checkpoints, releases), B takes them; every record is handled exactly once."""
    await make_stream(aws, "handoff", 4)
    first, second = MemoryBatchHandler(), MemoryBatchHandler()
    sent: list[str] = []

    async def produce(count: int) -> None:
        for _ in range(count):
            burst = len(sent) // 20
            batch = [(f"dev-{i}", f"h{burst}-{i}") for i in range(20)]
            await put(aws, "handoff", batch)
            sent.extend(body for _, body in batch)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        # Longer leases than elsewhere: a CPU-starved renewal must not expire a lease here,
        # where exactly-once across the hand-off is the point.
        a = KinesisConsumer(aws, first, stream="handoff",
                            config=fast_config(worker_id="A", lease_duration=4.0))
        await tg.start(a.run)
        await produce(5)
        b = KinesisConsumer(aws, second, stream="handoff",
                            config=fast_config(worker_id="B", lease_duration=4.0))
        await tg.start(b.run)
        await produce(15)

        async def split() -> bool:
            return len(a.held_shards) == 2 and len(b.held_shards) == 2

        await wait_for(split, 10, "a 2/2 split")
        await produce(5)

        async def all_handled() -> bool:
            return first.bodies() | second.bodies() == set(sent)

        await wait_for(all_handled, 10, "every record")
        a.stop()
        b.stop()
    handled = [m.body for m in first.handled + second.handled]
    assert sorted(handled) == sorted(sent)  # exactly once: no duplicate across the hand-off
    assert a.statistics().leases_handed_off == 2
    assert b.statistics().handoffs_requested == 2
    assert b.statistics().leases_stolen == 0
    assert second.handled  # B really processed its shards


async def test_sigterm_on_a_worker_process_finishes_the_batch_and_hands_the_lease_back(
    aws: AwsClients, tmp_path: Path
) -> None:
    """The real ECS entry (`python -m shared.hosts.worker`): SIGTERM mid-batch lets the batch
    finish, checkpoints it, releases the lease and exits 0; a new worker resumes after it."""
    await make_stream(aws, "sigterm", 1)
    await put(aws, "sigterm", [("k", "0.4") for _ in range(4)])
    ledger = tmp_path / "ledger.txt"
    root = ROOT
    env = {
        **os.environ,
        "FLEETLINE_SHUTDOWN_STREAM": "sigterm",
        "FLEETLINE_SHUTDOWN_LEASES": LEASES,
        "FLEETLINE_DRAIN_SECONDS": "10",
        "FLEETLINE_TEST_LEDGER": str(ledger),
        "PYTHONPATH": str(root),
    }
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        process = subprocess.Popen(  # noqa: ASYNC220 - polled below without blocking the loop
            [sys.executable, "-m", "shared.hosts.worker",
             "tests.integration.kinesis_worker_app:worker"],
            cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        async def mid_batch() -> bool:
            assert process.poll() is None, log.read_text()
            lines = ledger.read_text().splitlines() if ledger.exists() else []
            return any(line.startswith("done") for line in lines)

        await wait_for(mid_batch, 20, "the worker to be inside its first batch")
        process.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return process.poll() is not None

        await wait_for(exited, 15, "the worker to exit")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, log.read_text()
    lines = ledger.read_text().splitlines()
    assert [line for line in lines if line.startswith("done")] == [
        f"done {n}" for n in range(1, 5)
    ]  # the in-flight batch (all four records) finished
    [lease] = await LeaseTable(aws, LEASES, "kinesis-shutdown-test").list()
    assert lease.owner is None  # handed back, no expiry wait for the next worker
    assert lease.checkpoint == "4"


async def test_missing_stream_or_lease_table_is_refused_at_start(aws: AwsClients) -> None:
    await make_stream(aws, "exists", 1)
    with pytest.raises(ConsumerError, match="nope"):
        await KinesisConsumer(aws, MemoryBatchHandler(), stream="nope", config=fast_config()).run()
    consumer = KinesisConsumer(aws, MemoryBatchHandler(), stream="exists",
                               config=fast_config(lease_table="no-such-table"))
    with pytest.raises(ConsumerError, match="no-such-table"):
        await consumer.run()
    with pytest.raises(RuntimeError, match="runs once"):
        await consumer.run()


async def shard_tails(aws: AwsClients, stream: str) -> dict[str, str]:
    """The last sequence number of every shard that has records."""
    kinesis = await aws.client("kinesis")
    tails: dict[str, str] = {}
    for shard in (await kinesis.list_shards(StreamName=stream))["Shards"]:
        iterator = (await kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ))["ShardIterator"]
        records = (await kinesis.get_records(ShardIterator=iterator, Limit=10_000))["Records"]
        if records:
            tails[shard["ShardId"]] = records[-1]["SequenceNumber"]
    return tails


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("FLEETLINE_CHAOS"),
    reason="chaos rig (30-60 s of worker processes): run with FLEETLINE_CHAOS=1",
)
async def test_chaos_of_kills_and_restarts_loses_nothing(aws: AwsClients, tmp_path: Path) -> None:
    """Wolverine-style rig: three worker processes, a producer that never stops, and three
    times a SIGKILL of a random worker that holds leases (replaced by a new one). Afterwards
    every record was handled, and every shard's checkpoint is its last record."""
    await make_stream(aws, "chaos", 4)
    rng = random.Random(20261123)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", WORKER, "chaos", name, str(tmp_path / f"{name}.txt")],
            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def handled() -> list[str]:
        return [line for path in tmp_path.glob("*.txt") for line in path.read_text().split()]

    sent: list[str] = []
    producing = True

    async def produce() -> None:
        while producing:
            batch = [(f"dev-{(len(sent) + i) % 40}", f"c{len(sent) + i}") for i in range(25)]
            await put(aws, "chaos", batch)
            sent.extend(body for _, body in batch)
            await anyio.sleep(0.1)

    table = LeaseTable(aws, LEASES, "telemetry")
    kills = 0
    try:
        for name in ("w1", "w2", "w3"):
            start(name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for generation in range(4, 7):
                owners: set[str] = set()

                async def busy() -> bool:
                    nonlocal owners
                    owners = {lease.owner for lease in await table.list()
                              if lease.owner in procs}
                    return len(owners) >= 2

                await wait_for(busy, 20, "two live workers holding leases")
                victim = rng.choice(sorted(owners))  # a worker in the middle of its shards
                procs.pop(victim).kill()
                kills += 1
                start(f"w{generation}")
            producing = False

        async def settled() -> bool:
            if not set(sent) <= set(handled()):
                return False
            tails = await shard_tails(aws, "chaos")
            checkpoints = {lease.shard_id: lease.checkpoint for lease in await table.list()}
            return all(checkpoints.get(shard) == tail for shard, tail in tails.items())

        await wait_for(settled, 45, "every record handled and checkpointed")
    finally:
        for process in procs.values():
            process.kill()
            process.wait(5)
    seen = handled()
    duplicates = len(seen) - len(set(seen))
    print(f"\nchaos: {len(sent)} records, {duplicates} delivered twice after {kills} SIGKILLs")
    assert set(seen) == set(sent)


async def test_a_clean_shutdown_loses_no_lease_to_its_own_renewals(aws: AwsClients) -> None:
    """Renewals keep running while shards drain at shutdown; one that meets a lease this
    worker just released is not a lost lease (it used to log "lease lost: renewal refused"
    for most shards of every `fleetline down`)."""
    await make_stream(aws, "clean-stop", 8)
    entered = anyio.Event()

    async def slow(batch: Sequence[Message]) -> BatchResult:
        entered.set()
        await anyio.sleep(0.3)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    await put(aws, "clean-stop", [(f"k{i}", f"m{i}") for i in range(64)])
    consumer = KinesisConsumer(aws, slow, stream="clean-stop",
                               config=fast_config(renew_interval=0.02))
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(10):
            await entered.wait()
        await anyio.sleep(0.5)  # every shard has a batch in flight or just finished one
        consumer.stop()
    assert consumer.statistics().leases_lost == 0
    leases = await LeaseTable(aws, LEASES, "telemetry").list()
    assert len(leases) == 8
    assert all(lease.owner is None for lease in leases)
