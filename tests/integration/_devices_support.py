"""Resources the devices integration tests create through the API (never the app template),
and small readers for their results."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from shared.aws import AwsClients
from shared.consumers import create_lease_table


@dataclass(frozen=True)
class DeviceResources:
    stream: str
    devices_table: str
    devices_stream_arn: str
    lease_table: str
    failure_queue_url: str

    def environ(self) -> dict[str, str]:
        """As the template hands them to the telemetry worker."""
        return {
            "FLEETLINE_TELEMETRY_STREAM": self.stream,
            "FLEETLINE_DEVICES_TABLE": self.devices_table,
            "FLEETLINE_LEASES_TABLE": self.lease_table,
            "FLEETLINE_TELEMETRY_FAILURE_QUEUE": self.failure_queue_url,
        }


async def create_device_resources(aws: AwsClients, *, prefix: str = "t",
                                  shards: int = 2) -> DeviceResources:
    kinesis = await aws.client("kinesis")
    dynamodb = await aws.client("dynamodb")
    sqs = await aws.client("sqs")
    stream = f"{prefix}-telemetry"
    await kinesis.create_stream(StreamName=stream, ShardCount=shards)
    table = f"{prefix}-devices"
    created = await dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    leases = f"{prefix}-leases"
    await create_lease_table(aws, leases)
    queue = (await sqs.create_queue(QueueName=f"{prefix}-telemetry-failures"))["QueueUrl"]
    deadline = time.monotonic() + 10
    while (await kinesis.describe_stream_summary(StreamName=stream))[
            "StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError("stream not active")
        await anyio.sleep(0.05)
    return DeviceResources(stream, table, created["TableDescription"]["LatestStreamArn"],
                           leases, queue)


async def device_docs(aws: AwsClients, table: str) -> dict[str, dict[str, Any]]:
    """Every device's stored state document (plus version / event_seq), by device id."""
    dynamodb = await aws.client("dynamodb")
    out: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = await dynamodb.scan(**kwargs)
        for item in page.get("Items", []):
            doc = json.loads(item["doc"]["S"])
            doc["version"] = int(item["version"]["N"])
            doc["event_seq"] = int(item.get("event_seq", {"N": "0"})["N"])
            out[item["device_id"]["S"]] = doc
        if not page.get("LastEvaluatedKey"):
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def wait_for(check: Any, *, within: float, interval: float = 0.2) -> Any:
    """Poll the async `check()` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await anyio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last: {str(last)[:300]})")


async def drain_queue(aws: AwsClients, url: str) -> list[Mapping[str, Any]]:
    sqs = await aws.client("sqs")
    out: list[Mapping[str, Any]] = []
    while True:
        page = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                         MessageAttributeNames=["All"], WaitTimeSeconds=0)
        messages = page.get("Messages", [])
        if not messages:
            return out
        out.extend(messages)
        await sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


async def outbox_events(aws: AwsClients, stream_arn: str) -> list[dict[str, Any]]:
    """Every envelope the devices table's stream carries (the outbox), in stream order."""
    streams = await aws.client("dynamodbstreams")
    description = (await streams.describe_stream(StreamArn=stream_arn))["StreamDescription"]
    out: list[dict[str, Any]] = []
    for shard in description["Shards"]:
        iterator = (await streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ))["ShardIterator"]
        while iterator:
            page = await streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page.get("Records", []):
                image = record.get("dynamodb", {}).get("NewImage", {})
                for entry in image.get("outbox", {}).get("L", []):
                    out.append(json.loads(entry["S"]))
            if not page.get("Records"):
                break
            iterator = page.get("NextShardIterator")
    return out
