"""Kinesis consumer against the emulator: leases shared by workers, crash takeover, failure
queue, resharding (parents before children), requests per 1,000 records."""

from __future__ import annotations

import json
import os
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

from shared.aws import AwsClients
from shared.consumers._lease_decisions import SHARD_END
from shared.consumers._leases import LeaseTable, create_lease_table
from shared.consumers._message import BatchResult, Message, Outcome, SourceKind
from shared.consumers._stream import RecordsPage, StreamConsumer, StreamConsumerConfig
from shared.consumers.kinesis import KinesisConsumer, KinesisSource

pytestmark = pytest.mark.emulator

LEASES = "leases"


def fast_config(**overrides: object) -> StreamConsumerConfig:
    """Short durations so each test takes seconds."""
    settings: dict[str, object] = {
        "lease_table": LEASES,
        "application": "telemetry",
        "lease_duration": 1.5,
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


class Recorder:
    """A BatchHandler that records what it handled, in order, like a stream handler should:
    a `poison` body gets RETRY, and the records after it in the batch are left unhandled."""

    def __init__(self, poison: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[Message]] = []
        self.handled: list[Message] = []
        self.poison = poison

    async def __call__(self, batch: Sequence[Message]) -> BatchResult:
        self.calls.append(list(batch))
        outcomes: dict[str, Outcome] = {}
        for message in batch:
            if message.body in self.poison:
                return BatchResult({**outcomes, message.id: Outcome.RETRY},
                                   {message.id: "poison payload"})
            self.handled.append(message)
            outcomes[message.id] = Outcome.SUCCEEDED
        return BatchResult(outcomes)

    @property
    def succeeded(self) -> list[Message]:
        return self.handled

    def bodies(self) -> set[str]:
        return {m.body for m in self.handled}


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
    handler = Recorder()
    async with AwsClients() as own, anyio.create_task_group() as tg:
        consumer = KinesisConsumer(own, handler, stream="busy", config=fast_config())
        await tg.start(consumer.run)

        async def all_seen() -> bool:
            return len(handler.bodies()) == len(records)

        await wait_for(all_seen, 20, "every record handled")
        consumer.shutdown()
    requests = own.counter.snapshot()
    per_thousand = own.counter.total * 1000 / len(records)
    print(f"\nKinesis consumer: {own.counter.total} AWS requests for {len(records)} records "
          f"= {per_thousand:.1f} per 1,000 records; {requests}")
    assert per_thousand < 10
    stats = consumer.statistics()
    assert stats.records_succeeded == len(records)
    assert stats.records_received == len(records)
    # In order per partition key (one shard per key): bodies of each key are increasing.
    by_key: dict[str, list[int]] = {}
    for message in handler.succeeded:
        assert message.source is SourceKind.KINESIS
        assert message.sequence == message.id
        assert message.approximate_arrival is not None
        by_key.setdefault(str(message.group_id), []).append(int(message.body[1:]))
    assert all(values == sorted(values) for values in by_key.values())
    # Released with a checkpoint at the last record of each shard.
    leases = await LeaseTable(aws, LEASES, "telemetry").list()
    assert {lease.owner for lease in leases} == {None}
    last = {m.source_name: m.sequence for m in handler.succeeded}
    assert {lease.shard_id: lease.checkpoint for lease in leases} == last


async def test_bad_record_goes_to_failure_queue_and_shard_moves_on(aws: AwsClients) -> None:
    await make_stream(aws, "bad", 1)
    sqs = await aws.client("sqs")
    queue_url = (await sqs.create_queue(QueueName="failures"))["QueueUrl"]
    handler = Recorder(poison=frozenset({"poison"}))
    placed = await put(aws, "bad", [("dev-1", "a"), ("dev-1", "poison"), ("dev-1", "b")])
    async with anyio.create_task_group() as tg:
        consumer = KinesisConsumer(
            aws, handler, stream="bad", config=fast_config(failure_queue_url=queue_url)
        )
        await tg.start(consumer.run)
        await put(aws, "bad", [("dev-1", "c")])

        async def later_records_done() -> bool:
            return handler.bodies() >= {"a", "b", "c"}

        await wait_for(later_records_done, 10, "records after the poison one")
        consumer.shutdown()
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
    # Order held: a and b came before c, and b after the poison record's attempts.
    order = [m.body for m in handler.succeeded]
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
    async with anyio.create_task_group() as tg:
        consumer = KinesisConsumer(
            aws, handler, stream="raises", config=fast_config(failure_queue_url=queue_url)
        )
        await tg.start(consumer.run)

        async def done() -> bool:
            return set(handled) == set(bodies)

        await wait_for(done, 10, "every good record around the raising one")
        consumer.shutdown()
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
    first, second = Recorder(), Recorder()
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
            started = time.monotonic()
            b.shutdown()

        async def a_has_all() -> bool:
            return len(a.held_shards) == 4

        await wait_for(a_has_all, 5, "A to take B's released shards")
        assert time.monotonic() - started < 1.5  # released leases need no expiry wait
        more = [(f"k{i}", f"y{i}") for i in range(100)]
        await put(aws, "shared", more)

        async def handled_more() -> bool:
            return {b for _, b in more} <= first.bodies()

        await wait_for(handled_more, 10, "later records by A")
        a.shutdown()


WORKER = textwrap.dedent(
    """
    import sys, anyio
    from shared.aws import AwsClients
    from shared.consumers._message import BatchResult, Outcome
    from shared.consumers._stream import StreamConsumerConfig
    from shared.consumers.kinesis import KinesisConsumer

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
    survivor = Recorder()
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
            killed_at = time.monotonic()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)

        async def taken_over() -> bool:
            return len(a.held_shards) == 4

        await wait_for(taken_over, 10, "A to take the dead worker's shards")
        # Not before the lease expired (1.5 s after its last renewal).
        assert time.monotonic() - killed_at > 1.0
        third = [(f"dev-{i}", f"z{i}") for i in range(100)]
        await put(aws, "fleet", third)
        everything = {b for _, b in first + second + third}

        async def nothing_skipped() -> bool:
            return survivor.bodies() | victim_bodies() == everything

        await wait_for(nothing_skipped, 15, "every record handled by one of the workers")
        a.shutdown()
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
            return len(leases) == 8 and len(ended) == 6 and len(consumer.held_shards) == 2

        await wait_for(all_drained, 15, "6 drained parents and 2 merged children")
        consumer.shutdown()
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
