"""Test helpers for the effect layer: tables with streams, a bus routed to a queue, and a
minimal stream reader (the framework's DynamoDB Streams consumer is tested on its own)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio
from pydantic import BaseModel

from shared.aws import AwsClients
from shared.consumers._message import Message, SourceKind
from shared.events import EventRegistry, event_type

TEST_EVENTS = EventRegistry()


@event_type("OrderChanged", source="fleetline.test", registry=TEST_EVENTS)
class OrderChanged(BaseModel):
    step: int


@event_type("CounterBumped", source="fleetline.test", registry=TEST_EVENTS)
class CounterBumped(BaseModel):
    counter: str
    amount: int = 1


@event_type("CounterChanged", source="fleetline.test", registry=TEST_EVENTS)
class CounterChanged(BaseModel):
    counter: str
    total: int


async def create_table(
    aws: AwsClients, name: str, *, key: str = "pk", stream: str | None = "NEW_AND_OLD_IMAGES"
) -> str | None:
    """A pay-per-request table with a string partition key; returns its stream ARN."""
    dynamodb = await aws.client("dynamodb")
    extra: dict[str, Any] = {}
    if stream:
        extra["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream}
    response = await dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )
    arn = response["TableDescription"].get("LatestStreamArn")
    return str(arn) if arn else None


async def bus_to_queue(aws: AwsClients, bus: str, queue: str, *, source_prefix: str) -> str:
    """A custom bus, a rule matching `source_prefix`, and a queue as its target."""
    events = await aws.client("events")
    sqs = await aws.client("sqs")
    await events.create_event_bus(Name=bus)
    url = (await sqs.create_queue(QueueName=queue))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"]["QueueArn"]
    await events.put_rule(
        Name=f"{bus}-rule", EventBusName=bus,
        EventPattern=json.dumps({"source": [{"prefix": source_prefix}]}),
    )
    await events.put_targets(Rule=f"{bus}-rule", EventBusName=bus,
                             Targets=[{"Id": "q", "Arn": arn}])
    return str(url)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


async def read_stream(
    aws: AwsClients, stream_arn: str, *, after: str | None = None
) -> list[Message]:
    """Every record of every shard (from the trim horizon, or after sequence `after`)."""
    streams = await aws.client("dynamodbstreams")
    description = (await streams.describe_stream(StreamArn=stream_arn))["StreamDescription"]
    messages: list[Message] = []
    for shard in description["Shards"]:
        kwargs: dict[str, Any] = {"StreamArn": stream_arn, "ShardId": shard["ShardId"]}
        if after is None:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["SequenceNumber"] = after
        iterator = (await streams.get_shard_iterator(**kwargs))["ShardIterator"]
        while iterator:
            page = await streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page["Records"]:
                body = _jsonable(record)
                messages.append(Message(
                    id=record["dynamodb"]["SequenceNumber"], body=json.dumps(body),
                    source=SourceKind.DYNAMODB_STREAM, source_name=shard["ShardId"],
                    sequence=record["dynamodb"]["SequenceNumber"],
                ))
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return messages


async def drain(
    aws: AwsClients, url: str, *, expect: int, within: float = 10.0, settle: float = 0.5
) -> list[dict[str, Any]]:
    """Receive (and delete) until `expect` messages arrived, then keep listening `settle`
    seconds more so extra copies would be seen. Fails the test after `within` seconds."""
    sqs = await aws.client("sqs")
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    quiet_until: float | None = None
    while True:
        now = time.monotonic()
        if quiet_until is not None and now >= quiet_until:
            return bodies
        if now >= deadline:
            raise AssertionError(f"expected {expect} messages, got {len(bodies)}")
        page = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        received = page.get("Messages", [])
        for message in received:
            bodies.append(json.loads(message["Body"]))
        if received:
            await sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(received)
            ])
        if len(bodies) >= expect and quiet_until is None:
            quiet_until = time.monotonic() + settle
        if not received:
            await anyio.sleep(0.05)


def ids(bodies: Sequence[dict[str, Any]]) -> list[str]:
    return [str(b["detail"]["id"]) for b in bodies]
