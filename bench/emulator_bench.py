"""Emulator benchmark: what the embedded emulator's throughput fixes (shared.emulator)
change, against moto's own entry point, in the same run.

    .venv/bin/python -m bench.emulator_bench [--events 2000] [--backlog 1000]

Per emulator (fixed, then plain moto: FLEETLINE_EMULATOR_FIXES=0), with the real aiobotocore
clients over HTTP:

1. Bus: a custom bus with an archive and three rules, each to its own queue (the shape of
   the device-events bus: projection, dashboard feed, alarms); `--events` events in
   PutEvents of 10. Reported: events per second through PutEvents (each delivered to three
   queues and the archive).
2. Backlog: a queue holding `--backlog` messages; SendMessageBatch of 10 and then
   ReceiveMessage of 10 + DeleteMessageBatch until empty. Reported: messages per second
   each way. moto's cost per operation grows with the backlog; this is where it shows.
3. Table stream: `--backlog` device-shaped items written to a table with a NEW_IMAGE stream
   (the devices table), then read back with GetRecords of up to 1,000 as the outbox relay
   reads them. Reported: stream records per second read (moto's response serializer is
   where the time goes).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from shared.aws import AwsClients
from shared.emulator import Emulator


async def _bus(aws: AwsClients, events: int) -> float:
    ev = await aws.client("events")
    sqs = await aws.client("sqs")
    await ev.create_event_bus(Name="bench")
    bus_arn = (await ev.describe_event_bus(Name="bench"))["Arn"]
    await ev.create_archive(ArchiveName="bench-archive", EventSourceArn=bus_arn)
    for name in ("projection", "feed", "alarms"):
        url = (await sqs.create_queue(QueueName=f"bench-{name}"))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
            "Attributes"]["QueueArn"]
        await ev.put_rule(Name=name, EventBusName="bench",
                          EventPattern=json.dumps({"source": ["bench.devices"]}))
        await ev.put_targets(Rule=name, EventBusName="bench",
                             Targets=[{"Id": name, "Arn": arn}])
    entries = [{"Source": "bench.devices", "DetailType": "DeviceConnected",
                "Detail": json.dumps({"device": f"dev-{i:06d}", "n": i}),
                "EventBusName": "bench"} for i in range(events)]
    start = time.perf_counter()
    for i in range(0, events, 10):
        await ev.put_events(Entries=entries[i:i + 10])
    return events / (time.perf_counter() - start)


async def _backlog(aws: AwsClients, backlog: int) -> tuple[float, float]:
    sqs = await aws.client("sqs")
    url = (await sqs.create_queue(QueueName="bench-backlog"))["QueueUrl"]
    start = time.perf_counter()
    for i in range(0, backlog, 10):
        await sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(j), "MessageBody": f"message {i + j}"} for j in range(10)])
    sent = backlog / (time.perf_counter() - start)
    received = 0
    start = time.perf_counter()
    while received < backlog:
        got = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)).get(
            "Messages", [])
        if not got:
            break
        await sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(got)])
        received += len(got)
    if received != backlog:
        raise RuntimeError(f"received {received} of {backlog}")
    return sent, backlog / (time.perf_counter() - start)


async def _table_stream(aws: AwsClients, items: int) -> float:
    dynamodb = await aws.client("dynamodb")
    streams = await aws.client("dynamodbstreams")
    table = await dynamodb.create_table(
        TableName="bench-devices", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
    stream_arn = table["TableDescription"]["LatestStreamArn"]
    doc = json.dumps({"readings": {f"m{k}": k * 1.5 for k in range(8)}, "firmware": "1.4.2",
                      "status": "ONLINE", "reported": {"mode": "eco", "interval": 30}})
    for i in range(items):
        await dynamodb.put_item(TableName="bench-devices", Item={
            "device_id": {"S": f"dev-{i:06d}"}, "tenant_id": {"S": "t-001"},
            "version": {"N": str(i)}, "status": {"S": "ONLINE"}, "doc": {"S": doc}})
    shard = (await streams.describe_stream(StreamArn=stream_arn))["StreamDescription"][
        "Shards"][0]["ShardId"]
    iterator = (await streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    read = 0
    start = time.perf_counter()
    while read < items:
        page = await streams.get_records(ShardIterator=iterator, Limit=1000)
        if not page["Records"]:
            break
        read += len(page["Records"])
        iterator = page["NextShardIterator"]
    if read != items:
        raise RuntimeError(f"read {read} of {items} stream records")
    return items / (time.perf_counter() - start)


async def _measure(events: int, backlog: int) -> dict[str, Any]:
    async with AwsClients() as aws:
        bus = await _bus(aws, events)
        sent, received = await _backlog(aws, backlog)
        stream = await _table_stream(aws, backlog)
    return {"bus": bus, "sent": sent, "received": received, "stream": stream}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--backlog", type=int, default=1_000)
    args = parser.parse_args()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    console = Console()
    results: dict[str, dict[str, Any]] = {}
    for label, fixes in (("with fleetline's fixes", "1"), ("moto as shipped", "0")):
        os.environ["FLEETLINE_EMULATOR_FIXES"] = fixes
        console.print(f"{label}: {args.events:,} events, backlog of {args.backlog:,} ...")
        with Emulator() as emulator:
            os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint_url
            results[label] = anyio.run(_measure, args.events, args.backlog)
    table = Table(title="embedded emulator throughput (higher is better)")
    for name in ("emulator", "PutEvents events/s (3 rules + archive)",
                 f"SendMessageBatch msgs/s (to {args.backlog:,})",
                 f"Receive+Delete msgs/s (from {args.backlog:,})",
                 "stream GetRecords records/s"):
        table.add_column(name, justify="right" if name != "emulator" else "left")
    for label, r in results.items():
        table.add_row(label, f"{r['bus']:,.0f}", f"{r['sent']:,.0f}", f"{r['received']:,.0f}",
                      f"{r['stream']:,.0f}")
    console.print(table)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
