"""The residency scan: every DynamoDB table, S3 bucket, SQS queue, Kinesis stream and
EventBridge archive of one Region, read over real HTTP, searched for device ids.

Resources are enumerated from the APIs (ListTables, ListBuckets + GetBucketLocation,
ListQueues, ListStreams, ListArchives), never from the template, so a resource added later is
scanned too. How each kind is read without disturbing the stack:

- tables: Scan, every page;
- buckets: every object; Parquet objects are decoded (their strings may be compressed),
  others are searched as bytes;
- queues: ReceiveMessage with a short visibility timeout until nothing more comes (SQS has
  no peek: a scanned message is back after `QUEUE_PEEK_S`, its receive count one higher; a
  queue with a redrive policy of maxReceiveCount 1 would move it to its DLQ: none has one);
- streams (Kinesis, and each table's DynamoDB stream): every shard from TRIM_HORIZON to its
  tip (reading never consumes);
- archives: no API lists archived events, so each archive is replayed (StartReplay, with
  FilterArns naming a rule of the scan's own, into a queue of the scan's own in the same
  Region). On AWS only that rule receives the replay; the emulator ignores FilterArns, so
  the stack's rules receive it too (its consumers are idempotent: they count duplicates).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from shared.aws import AwsClients

QUEUE_PEEK_S = 2


@dataclass(frozen=True)
class Finding:
    region: str
    kind: str  # table | bucket | queue | stream | archive
    name: str
    needle: str


@dataclass
class Scanned:
    """What one Region's scan read, per kind (to show it read something), and its findings."""

    region: str
    resources: dict[str, int]
    findings: list[Finding]


def _hits(text: str, needles: Iterable[str]) -> set[str]:
    return {n for n in needles if n in text}


async def scan_region(aws: AwsClients, needles: frozenset[str]) -> Scanned:
    """Scan the Region of `aws` for any of `needles` (device ids)."""
    region = aws.region
    found: list[Finding] = []
    counts = {"table": 0, "table-stream": 0, "bucket": 0, "queue": 0, "stream": 0, "archive": 0}

    def note(kind: str, name: str, text: str) -> None:
        found.extend(Finding(region, kind, name, n) for n in sorted(_hits(text, needles)))

    dynamodb = await aws.client("dynamodb")
    tables = [t for page in [await dynamodb.list_tables()] for t in page["TableNames"]]
    for table in tables:
        counts["table"] += 1
        kwargs: dict[str, Any] = {"TableName": table}
        while True:
            page = await dynamodb.scan(**kwargs)
            note("table", table, json.dumps(page.get("Items", []), default=str))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    s3 = await aws.client("s3")
    for bucket in (await s3.list_buckets())["Buckets"]:
        name = bucket["Name"]
        location = (await s3.get_bucket_location(Bucket=name)).get("LocationConstraint")
        if (location or "us-east-1") != region:
            continue  # ListBuckets names every Region's buckets
        counts["bucket"] += 1
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=name):
            for obj in page.get("Contents", []):
                body = await (await s3.get_object(Bucket=name, Key=obj["Key"]))["Body"].read()
                note("bucket", f"{name}/{obj['Key']}", obj["Key"] + _text_of(body))

    sqs = await aws.client("sqs")
    queues = (await sqs.list_queues()).get("QueueUrls", [])
    for url in queues:
        counts["queue"] += 1
        seen: set[str] = set()
        while True:
            got = (await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=QUEUE_PEEK_S,
                WaitTimeSeconds=0, MessageAttributeNames=["All"])).get("Messages", [])
            fresh = [m for m in got if m["MessageId"] not in seen]
            if not fresh:
                break
            for m in fresh:
                seen.add(m["MessageId"])
                note("queue", url.rsplit("/", 1)[-1],
                     m["Body"] + json.dumps(m.get("MessageAttributes", {}), default=str))

    kinesis = await aws.client("kinesis")
    for stream in (await kinesis.list_streams())["StreamNames"]:
        counts["stream"] += 1
        for shard in (await kinesis.list_shards(StreamName=stream))["Shards"]:
            iterator = (await kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"],
                ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
            while iterator:
                page = await kinesis.get_records(ShardIterator=iterator, Limit=10_000)
                for record in page["Records"]:
                    note("stream", stream, _text_of(record["Data"]))
                if not page["Records"]:
                    break
                iterator = page.get("NextShardIterator")

    streams = await aws.client("dynamodbstreams")
    for listed in (await streams.list_streams()).get("Streams", []):
        counts["table-stream"] += 1
        arn = listed["StreamArn"]
        shards = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"]
        for shard in shards:
            iterator = (await streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"],
                ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
            while iterator:
                page = await streams.get_records(ShardIterator=iterator, Limit=1000)
                note("table-stream", listed["TableName"],
                     json.dumps(page["Records"], default=str))
                if not page["Records"]:
                    break
                iterator = page.get("NextShardIterator")

    events = await aws.client("events")
    archives = (await events.list_archives()).get("Archives", [])
    if archives:
        scan_id = uuid.uuid4().hex[:8]
        queue_url = (await sqs.create_queue(QueueName=f"residency-scan-{scan_id}"))["QueueUrl"]
        queue_arn = (await sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        try:
            for archive in archives:
                counts["archive"] += 1
                described = await events.describe_archive(ArchiveName=archive["ArchiveName"])
                bus_arn = described["EventSourceArn"]
                rule = f"residency-scan-{scan_id}-{counts['archive']}"
                replay = f"{rule}-replay"
                rule_arn = (await events.put_rule(
                    Name=rule, EventBusName=bus_arn,
                    EventPattern=json.dumps({"replay-name": [replay]})))["RuleArn"]
                await events.put_targets(Rule=rule, EventBusName=bus_arn,
                                         Targets=[{"Id": "scan", "Arn": queue_arn}])
                try:
                    await events.start_replay(
                        ReplayName=replay, EventSourceArn=described["ArchiveArn"],
                        EventStartTime=0, EventEndTime=time.time() + 60,
                        Destination={"Arn": bus_arn, "FilterArns": [rule_arn]})
                    await _wait_replayed(events, replay)
                    replayed = await _drain(sqs, queue_url)
                finally:
                    await events.remove_targets(Rule=rule, EventBusName=bus_arn, Ids=["scan"])
                    await events.delete_rule(Name=rule, EventBusName=bus_arn)
                if len(replayed) < described.get("EventCount", 0):
                    raise AssertionError(
                        f"archive {archive['ArchiveName']} in {region}: replayed "
                        f"{len(replayed)} of {described['EventCount']} events")
                for body in replayed:
                    note("archive", archive["ArchiveName"], body)
        finally:
            await sqs.delete_queue(QueueUrl=queue_url)
    return Scanned(region=region, resources=counts, findings=found)


async def _wait_replayed(events: Any, replay: str) -> None:
    with anyio.fail_after(30):
        while True:
            state = (await events.describe_replay(ReplayName=replay))["State"]
            if state in {"COMPLETED", "FAILED", "CANCELLED"}:
                return
            await anyio.sleep(0.2)


async def _drain(sqs: Any, url: str) -> list[str]:
    """Every message body of the scan's own queue, deleted as read."""
    bodies: list[str] = []
    while True:
        got = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=0)).get("Messages", [])
        if not got:
            return bodies
        bodies.extend(m["Body"] for m in got)
        await sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])


def _text_of(data: bytes) -> str:
    """Searchable text of stored bytes: Parquet decoded to its rows, gzip inflated, else the
    bytes as text."""
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")
