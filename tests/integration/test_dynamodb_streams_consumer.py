"""DynamoDB Streams consumer against the emulator: the same lease machinery as Kinesis, records
delivered in order per item as Lambda-shaped stream record JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import anyio
import pytest

from shared.aws import AwsClients
from shared.consumers._message import BatchResult, Message, Outcome, SourceKind
from shared.consumers.dynamodb_streams import (
    DynamoDBStreamsConsumer,
    DynamoDBStreamSource,
    latest_stream_arn,
)
from shared.consumers.streams import (
    InitialPosition,
    RecordsPage,
    StreamConsumer,
    StreamConsumerConfig,
    TrimmedDataError,
    create_lease_table,
)
from shared.consumers.streams._leases import LeaseTable

pytestmark = pytest.mark.emulator


def fast_config(**overrides: object) -> StreamConsumerConfig:
    settings: dict[str, object] = {
        "lease_table": "leases",
        "application": "outbox-relay",
        "lease_duration": 3.0,  # single-worker tests never wait for an expiry
        "renew_interval": 0.3,
        "take_interval": 0.3,
        "shard_sync_interval": 0.5,
        "idle_backoff": 0.1,
        "retry_backoff": 0.02,
        "retry_backoff_max": 0.1,
    }
    settings.update(overrides)
    return StreamConsumerConfig(**settings)  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await anyio.sleep(0.05)


async def make_table(aws: AwsClients, name: str) -> str:
    ddb = await aws.client("dynamodb")
    await ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    await create_lease_table(aws, "leases")
    return await latest_stream_arn(aws, name)


async def test_stream_records_arrive_in_order_per_item(aws: AwsClients) -> None:
    arn = await make_table(aws, "orders")
    ddb = await aws.client("dynamodb")
    seen: list[Message] = []

    async def handler(batch: Sequence[Message]) -> BatchResult:
        seen.extend(batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    items = [f"order-{i}" for i in range(5)]
    for pk in items:  # written before the consumer starts: TRIM_HORIZON picks them up
        await ddb.put_item(TableName="orders", Item={
            "pk": {"S": pk}, "sk": {"S": "state"}, "version": {"N": "1"}})
    async with anyio.create_task_group() as tg:
        consumer = DynamoDBStreamsConsumer(aws, handler, stream_arn=arn, config=fast_config())
        await tg.start(consumer.run)
        for version in (2, 3):
            for pk in items:
                await ddb.update_item(
                    TableName="orders", Key={"pk": {"S": pk}, "sk": {"S": "state"}},
                    UpdateExpression="SET version = :v",
                    ExpressionAttributeValues={":v": {"N": str(version)}},
                )
        await wait_for(lambda: len(seen) >= 15, 10, "15 stream records")
        consumer.stop()
    assert len(seen) == 15
    for pk in items:
        records = [json.loads(m.body) for m in seen if m.group_id == pk]
        assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "MODIFY"]
        versions = [r["dynamodb"]["NewImage"]["version"]["N"] for r in records]
        assert versions == ["1", "2", "3"]
        assert "OldImage" not in records[0]["dynamodb"]
        assert records[2]["dynamodb"]["OldImage"]["version"] == {"N": "2"}
        assert all(r["eventSourceARN"] == arn for r in records)
        assert all(isinstance(r["dynamodb"]["ApproximateCreationDateTime"], float)
                   for r in records)
    first = seen[0]
    assert first.source is SourceKind.DYNAMODB_STREAM
    assert first.sequence == first.id == json.loads(first.body)["dynamodb"]["SequenceNumber"]
    assert first.approximate_arrival is not None
    assert consumer.statistics().records_succeeded == 15
    [lease] = await LeaseTable(aws, "leases", "outbox-relay").list()
    assert lease.checkpoint == seen[-1].sequence
    assert lease.owner is None


async def test_restart_resumes_after_the_checkpoint(aws: AwsClients) -> None:
    """A second consumer of the same application starts where the first one stopped."""
    arn = await make_table(aws, "restart")
    ddb = await aws.client("dynamodb")
    seen: list[str] = []

    async def handler(batch: Sequence[Message]) -> BatchResult:
        seen.extend(json.loads(m.body)["dynamodb"]["Keys"]["pk"]["S"] for m in batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    async def run_until(count: int) -> None:
        async with anyio.create_task_group() as tg:
            consumer = DynamoDBStreamsConsumer(aws, handler, stream_arn=arn,
                                               config=fast_config())
            await tg.start(consumer.run)
            await wait_for(lambda: len(seen) >= count, 10, f"{count} records")
            consumer.stop()

    for i in range(3):
        await ddb.put_item(TableName="restart", Item={"pk": {"S": f"a{i}"}, "sk": {"S": "x"}})
    await run_until(3)
    for i in range(3):
        await ddb.put_item(TableName="restart", Item={"pk": {"S": f"b{i}"}, "sk": {"S": "x"}})
    await run_until(6)
    assert seen == ["a0", "a1", "a2", "b0", "b1", "b2"]


class TrimmingSource(DynamoDBStreamSource):
    """The real source; its first read answers TrimmedDataAccessException, as DynamoDB does
    for a checkpoint older than the stream's 24 h retention."""

    def __init__(self, aws: AwsClients, arn: str) -> None:
        super().__init__(aws, arn)
        self.opened: list[tuple[str | None, InitialPosition]] = []
        self.reads = 0

    async def get_iterator(
        self, shard_id: str, *, after: str | None, initial: InitialPosition
    ) -> str:
        self.opened.append((after, initial))
        return await super().get_iterator(shard_id, after=after, initial=initial)

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage:
        self.reads += 1
        if self.reads == 1:
            raise TrimmedDataError("TrimmedDataAccessException")
        return await super().get_records(shard_id, iterator, limit=limit)


async def test_checkpoint_past_retention_resumes_at_trim_horizon(aws: AwsClients) -> None:
    arn = await make_table(aws, "trimmed")
    ddb = await aws.client("dynamodb")
    seen: list[str] = []

    async def handler(batch: Sequence[Message]) -> BatchResult:
        seen.extend(json.loads(m.body)["dynamodb"]["Keys"]["pk"]["S"] for m in batch)
        return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})

    for i in range(2):
        await ddb.put_item(TableName="trimmed", Item={"pk": {"S": f"a{i}"}, "sk": {"S": "x"}})
    table = LeaseTable(aws, "leases", "outbox-relay")
    async with anyio.create_task_group() as tg:
        first = DynamoDBStreamsConsumer(aws, handler, stream_arn=arn, config=fast_config())
        await tg.start(first.run)
        await wait_for(lambda: len(seen) >= 2, 10, "2 records")
        first.stop()
    [lease] = await table.list()
    source = TrimmingSource(aws, arn)
    async with anyio.create_task_group() as tg:
        second = StreamConsumer(aws, handler, source, fast_config())
        await tg.start(second.run)
        await wait_for(lambda: len(seen) >= 4, 10, "the records again from the horizon")
        second.stop()
    assert source.opened[:2] == [
        (lease.checkpoint, InitialPosition.TRIM_HORIZON),
        (None, InitialPosition.TRIM_HORIZON),
    ]
    assert seen == ["a0", "a1", "a0", "a1"]
