"""Kinesis enhanced fan-out against the emulator (its `kinesis-fan-out` fix serves
SubscribeToShard): two readers each see every record put after they started, in shard
order; subscriptions are renewed from their continuation; the children of a resharded
shard are read; consumers are deregistered at the end of their block."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

import anyio
import pytest

from shared.aws import AwsClients, ClientSettings
from shared.consumers import Message
from shared.consumers.kinesis import (
    FanOutSettings,
    KinesisFanOut,
    fan_out_consumer,
    list_fan_out_consumers,
    stream_arn,
)
from shared.emulator import Emulator
from shared.emulator.fixes.kinesis_fan_out import SUBSCRIPTION_ENV
from shared.errors import AwsRequestError

pytestmark = pytest.mark.emulator

STREAM = "fan-out"
FAST = FanOutSettings(shard_sync_interval=0.5, retry_backoff=0.05, retry_backoff_max=0.2)


class Seen:
    """What one reader received: (shard id, data) in order, and when."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.arrival: dict[str, float] = {}

    def __call__(self, shard_id: str, messages: Sequence[Message]) -> None:
        now = time.monotonic()
        for message in messages:
            self.records.append((shard_id, message.body))
            self.arrival.setdefault(message.body, now)

    def bodies(self) -> set[str]:
        return {body for _, body in self.records}


async def wait_until(condition: object, *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await anyio.sleep(0.02)


async def put(aws: AwsClients, bodies: Sequence[str], *, key: str | None = None) -> None:
    kinesis = await aws.client("kinesis")
    for start in range(0, len(bodies), 500):
        chunk = bodies[start:start + 500]
        await kinesis.put_records(StreamName=STREAM, Records=[
            {"Data": body.encode(), "PartitionKey": key or body} for body in chunk])


async def make_stream(aws: AwsClients, shards: int) -> str:
    kinesis = await aws.client("kinesis")
    await kinesis.create_stream(StreamName=STREAM, ShardCount=shards)
    return await stream_arn(aws, STREAM)


async def test_two_readers_each_see_every_record_put_after_they_started(
        aws: AwsClients) -> None:
    arn = await make_stream(aws, 3)
    await put(aws, ["before-1", "before-2"])
    seen = [Seen(), Seen()]
    async with fan_out_consumer(aws, arn, name="task-a") as a, \
            fan_out_consumer(aws, arn, name="task-b") as b:
        assert {c.name for c in await list_fan_out_consumers(aws, arn)} == {"task-a", "task-b"}
        readers = [KinesisFanOut(aws, consumer, on_records=s, settings=FAST)
                   for consumer, s in zip((a, b), seen, strict=True)]
        async with anyio.create_task_group() as tg:
            for reader in readers:
                await tg.start(reader.run)
            sent = [f"r-{i:03d}" for i in range(300)]
            put_at = time.monotonic()
            await put(aws, sent)
            ordered = [f"k-{i:03d}" for i in range(50)]  # one key: one shard, in order
            await put(aws, ordered, key="same-device")
            for s in seen:
                await wait_until(lambda s=s: len(s.records) >= 350, within=10,
                                 what="every record at both readers")
            tg.cancel_scope.cancel()
        stats = readers[0].statistics()
    for s in seen:
        assert s.bodies() == set(sent) | set(ordered)  # nothing from before LATEST
        assert len(s.records) == 350  # each once
        shard_of_key = {shard for shard, body in s.records if body.startswith("k-")}
        assert len(shard_of_key) == 1
        assert [body for _, body in s.records if body.startswith("k-")] == ordered
    latency = max(seen[0].arrival[b] for b in sent) - put_at
    assert latency < 5.0
    assert stats.records == 350
    assert len(stats.shards) == 3
    assert stats.subscriptions >= 3
    # deregistered at the end of their blocks
    assert await list_fan_out_consumers(aws, arn) == []


async def test_the_children_of_a_resharded_shard_are_read(aws: AwsClients) -> None:
    arn = await make_stream(aws, 1)
    seen = Seen()
    kinesis = await aws.client("kinesis")
    async with fan_out_consumer(aws, arn, name="task-a") as consumer:
        reader = KinesisFanOut(aws, consumer, on_records=seen, settings=FAST)
        async with anyio.create_task_group() as tg:
            await tg.start(reader.run)
            await put(aws, ["parent-1", "parent-2"])
            await wait_until(lambda: len(seen.records) == 2, within=10, what="parent's records")
            await kinesis.update_shard_count(StreamName=STREAM, TargetShardCount=2,
                                             ScalingType="UNIFORM_SCALING")
            after = [f"child-{i}" for i in range(40)]
            await put(aws, after)
            await wait_until(lambda: set(after) <= seen.bodies(), within=10,
                             what="the children's records")
            tg.cancel_scope.cancel()
    shards = {shard for shard, body in seen.records if body.startswith("child-")}
    assert len(shards) == 2
    assert "shardId-000000000000" not in shards
    # the parent's records once, from the parent; the records put after, from the children
    assert sorted(body for _, body in seen.records) == sorted(["parent-1", "parent-2", *after])
    assert {shard for shard, body in seen.records if body.startswith("parent-")} == {
        "shardId-000000000000"}
    assert set(reader.statistics().shards) == shards


async def test_a_reader_whose_consumer_is_gone_stops_with_the_error(aws: AwsClients) -> None:
    arn = await make_stream(aws, 1)
    kinesis = await aws.client("kinesis")
    async with fan_out_consumer(aws, arn, name="task-a") as consumer:
        await kinesis.deregister_stream_consumer(ConsumerARN=consumer.arn)
        reader = KinesisFanOut(aws, consumer, on_records=Seen(), settings=FAST)
        with pytest.raises(AwsRequestError, match="not found"):
            with anyio.fail_after(10):
                await reader.run()


@pytest.fixture
def short_subscriptions() -> Iterator[Emulator]:
    """An emulator of its own whose subscriptions last one second (AWS: five minutes)."""
    previous = os.environ.get(SUBSCRIPTION_ENV)
    os.environ[SUBSCRIPTION_ENV] = "1"
    try:
        with Emulator() as emulator:
            yield emulator
    finally:
        if previous is None:
            os.environ.pop(SUBSCRIPTION_ENV, None)
        else:
            os.environ[SUBSCRIPTION_ENV] = previous


async def test_an_ended_subscription_is_renewed_from_its_continuation(
        short_subscriptions: Emulator) -> None:
    settings = ClientSettings(endpoint_url=short_subscriptions.endpoint_url)
    async with AwsClients(settings) as aws:
        arn = await make_stream(aws, 1)
        seen = Seen()
        async with fan_out_consumer(aws, arn, name="task-a") as consumer:
            reader = KinesisFanOut(aws, consumer, on_records=seen, settings=FAST)
            async with anyio.create_task_group() as tg:
                await tg.start(reader.run)
                sent = []
                for i in range(8):  # across at least three subscriptions
                    sent.append(f"r-{i}")
                    await put(aws, [sent[-1]])
                    await anyio.sleep(0.4)
                await wait_until(lambda: len(seen.records) >= 8, within=10,
                                 what="every record across renewals")
                tg.cancel_scope.cancel()
    assert [body for _, body in seen.records] == sent  # none lost, none twice
    assert reader.statistics().subscriptions >= 3
