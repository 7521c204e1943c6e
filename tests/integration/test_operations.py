"""Operating the stack (shared.operations) against the emulator: the DLQ tools list, peek at,
redrive and purge; an archive replay replays its window through the rules it names; and on
the orders runtime, a replay of the last hour and a redrive of an applied message change
nothing (every consumer deduplicates)."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from shared.aws import AwsClients
from shared.consumers import (
    BatchResult,
    DeadLetter,
    Message,
    Outcome,
    SqsConsumer,
    SqsSettings,
)
from shared.operations import (
    DeadLetterQueues,
    check_window,
    dead_letter_sources,
    start_replay,
    wait_replay,
)
from tests.integration.orders_support import eventually, order_body, running_orders

pytestmark = pytest.mark.emulator

TEMPLATE: dict[str, Any] = {"Resources": {
    "WorkQueue": {"Type": "AWS::SQS::Queue", "Properties": {"RedrivePolicy": {
        "deadLetterTargetArn": {"Fn::GetAtt": ["WorkDlq", "Arn"]}, "maxReceiveCount": 3}}},
    "WorkDlq": {"Type": "AWS::SQS::Queue", "Properties": {}},
}}


async def _queue_pair(aws: AwsClients) -> dict[str, str]:
    sqs = await aws.client("sqs")
    dlq = (await sqs.create_queue(QueueName="ops-work-dlq"))["QueueUrl"]
    dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
               )["Attributes"]["QueueArn"]
    work = (await sqs.create_queue(QueueName="ops-work", Attributes={
        "VisibilityTimeout": "5", "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})}))["QueueUrl"]
    return {"WorkQueue": work, "WorkDlq": dlq}


async def test_dlq_list_peek_redrive_and_purge(aws: AwsClients) -> None:
    queues = await _queue_pair(aws)
    sqs = await aws.client("sqs")
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    for n in range(3):
        await sqs.send_message(QueueUrl=queues["WorkQueue"], MessageBody=f'{{"n": {n}}}',
                               MessageSystemAttributes={"AWSTraceHeader": {
                                   "DataType": "String", "StringValue": trace}})

    async def refuse(messages: list[Message]) -> BatchResult:
        return BatchResult({m.id: Outcome.DEAD_LETTER for m in messages},
                           {m.id: f"DeadLetter: {DeadLetter('no such sku: ZZZ')}"
                            for m in messages})

    consumer = SqsConsumer(aws, queues["WorkQueue"], refuse,
                           settings=SqsSettings(wait_time_seconds=0, drain_seconds=0.5))
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        await eventually(lambda: _true(consumer.statistics().dead_lettered >= 3), within=20,
                         what="three messages dead-lettered")
        consumer.stop(drain_seconds=0.5)

    tools = DeadLetterQueues(aws, queues, dead_letter_sources(TEMPLATE))
    [summary] = await tools.summaries()
    assert (summary.name, summary.depth, summary.redrive_to) == ("ops-work-dlq", 3,
                                                                  ("WorkQueue",))
    assert summary.sources == ("WorkQueue (AWS::SQS::Queue)",)
    assert summary.oldest_age_s is not None
    assert summary.oldest_age_s < 60

    peeked = await tools.peek("ops-work-dlq", n=2)
    assert len(peeked) == 2
    first = peeked[0]
    assert first.error == "DeadLetter"
    assert first.reason is not None
    assert "no such sku: ZZZ" in first.reason
    assert first.receive_count == 1
    assert first.source_queue == "ops-work"
    assert first.trace_id == "5759e988bd862e3fe1be46a994272793"
    assert first.first_failure_at is not None
    assert (await tools.summaries())[0].depth == 3  # peeking leaves them in the DLQ

    moved = await tools.redrive("WorkDlq", max_messages=1)
    assert (moved.method, moved.moved, moved.by_destination) == (
        "receive-send-delete", 1, {"ops-work": 1})
    moved = await tools.redrive("ops-work-dlq")  # no limit, one source: StartMessageMoveTask
    assert (moved.method, moved.moved, moved.left) == ("StartMessageMoveTask", 2, 0)
    depth = (await sqs.get_queue_attributes(QueueUrl=queues["WorkQueue"], AttributeNames=[
        "ApproximateNumberOfMessages"]))["Attributes"]["ApproximateNumberOfMessages"]
    assert depth == "3"
    got = (await sqs.receive_message(QueueUrl=queues["WorkQueue"], MaxNumberOfMessages=10,
                                     MessageSystemAttributeNames=["All"]))["Messages"]
    assert sorted(m["Body"] for m in got) == ['{"n": 0}', '{"n": 1}', '{"n": 2}']

    await sqs.send_message(QueueUrl=queues["WorkDlq"], MessageBody="x")
    assert await tools.purge("WorkDlq") == 1
    assert (await tools.summaries())[0].depth == 0
    with pytest.raises(Exception, match="not a DLQ of the stack"):
        await tools.peek("ops-work")


async def _true(value: bool) -> bool:
    return value


async def test_replay_replays_its_window_through_the_rules_it_names(aws: AwsClients) -> None:
    events = await aws.client("events")
    sqs = await aws.client("sqs")
    bus_arn = (await events.create_event_bus(Name="ops-bus"))["EventBusArn"]
    archive_arn = (await events.create_archive(ArchiveName="ops-archive",
                                               EventSourceArn=bus_arn))["ArchiveArn"]
    urls = {}
    for name, kind in (("placed", "Placed"), ("other", "Other")):
        url = (await sqs.create_queue(QueueName=f"ops-{name}"))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
               )["Attributes"]["QueueArn"]
        await events.put_rule(Name=f"ops-{name}", EventBusName="ops-bus",
                              EventPattern=json.dumps({"detail-type": [kind]}))
        await events.put_targets(Rule=f"ops-{name}", EventBusName="ops-bus",
                                 Targets=[{"Id": "q", "Arn": arn}])
        urls[kind] = url
    now = datetime.now(UTC)
    for kind, when in (("Placed", now - timedelta(hours=3)), ("Placed", now),
                       ("Other", now)):
        await events.put_events(Entries=[{"EventBusName": "ops-bus", "Source": "ops",
                                          "DetailType": kind, "Time": when,
                                          "Detail": json.dumps({"at": when.isoformat()})}])
    for url in urls.values():
        await sqs.purge_queue(QueueUrl=url)  # what the first delivery left
    rule_arn = (await events.describe_rule(Name="ops-placed", EventBusName="ops-bus"))["Arn"]
    window = check_window(now - timedelta(hours=1), now + timedelta(minutes=1),
                          retention_days=30, now=time.time())
    name = await start_replay(aws, archive_arn=archive_arn, bus_arn=bus_arn, window=window,
                              filter_arns=[rule_arn])
    assert await wait_replay(aws, name, within=10) == "COMPLETED"
    placed = (await sqs.receive_message(QueueUrl=urls["Placed"], MaxNumberOfMessages=10,
                                        WaitTimeSeconds=1)).get("Messages", [])
    other = (await sqs.receive_message(QueueUrl=urls["Other"], MaxNumberOfMessages=10)
             ).get("Messages", [])
    # only the event of the last hour, and only through the rule named
    assert [json.loads(m["Body"])["detail"]["at"] for m in placed] == [now.isoformat()]
    assert other == []


async def test_a_replayed_hour_and_a_redriven_message_apply_nothing_twice(
    aws: AwsClients,
) -> None:
    async with running_orders(aws) as o:
        events = await aws.client("events")
        bus_arn = (await events.describe_event_bus(Name=o.stack.bus_name))["Arn"]
        archive_arn = (await events.create_archive(
            ArchiveName=f"{o.stack.bus_name}-archive", EventSourceArn=bus_arn))["ArchiveArn"]
        ids = []
        for n in range(3):
            status, answer = await o.post(order_body(f"c-r{n}"), key=f"replay-{n}")
            assert status == 202, answer
            ids.append(answer["order_id"])
        finals = {i: await o.final(i, within=90) for i in ids}
        assert {f["status"] for f in finals.values()} == {"CONFIRMED"}
        await eventually(lambda: _true(len(o.emails) >= 3), within=30, what="three emails")
        notifier = o.runtime.consumers["notifications"]
        skipped_before = notifier.statistics().duplicates

        now = datetime.now(UTC)
        window = check_window(now - timedelta(hours=1), now, retention_days=30,
                              now=time.time())
        name = await start_replay(aws, archive_arn=archive_arn, bus_arn=bus_arn,
                                  window=window)
        assert await wait_replay(aws, name, within=30) == "COMPLETED"
        # every replayed OrderConfirmed reaches the notifications worker and is skipped
        await eventually(lambda: _true(notifier.statistics().duplicates >= skipped_before + 3),
                         within=60, what="the replayed confirmations skipped")

        # a redrive of a message whose effect happened: skipped too
        sqs = await aws.client("sqs")
        dlq = o.stack.queues["Notifications"] + "-dlq"
        confirmed = await _one_confirmation(aws, o.stack.bus_name, ids[0])
        await sqs.send_message(QueueUrl=dlq, MessageBody=confirmed)
        tools = DeadLetterQueues(aws, {"NotificationsQueue": o.stack.queues["Notifications"],
                                       "NotificationsDlq": dlq},
                                 dead_letter_sources({"Resources": {
                                     "NotificationsQueue": {"Type": "AWS::SQS::Queue",
                                                            "Properties": {"RedrivePolicy": {
                                                                "deadLetterTargetArn": {
                                                                    "Fn::GetAtt": [
                                                                        "NotificationsDlq",
                                                                        "Arn"]}}}},
                                     "NotificationsDlq": {"Type": "AWS::SQS::Queue"}}}))
        assert (await tools.redrive("NotificationsDlq")).moved == 1
        await eventually(lambda: _true(notifier.statistics().duplicates >= skipped_before + 4),
                         within=30, what="the redriven confirmation skipped")
        assert Counter(e.subject for e in o.emails) == Counter(
            f"Order {i} confirmed" for i in ids)
        assert len(await o.executions()) == 3  # no second saga
        for order_id in ids:  # the read model did not move backwards or count twice
            status, body = await o.get(f"/orders/{order_id}")
            assert (status, body["status"]) == (200, "CONFIRMED")


async def _one_confirmation(aws: AwsClients, bus: str, order_id: str) -> str:
    """The OrderConfirmed of `order_id` as the bus delivers it (from a tap rule's replay)."""
    from services.orders.events import OrderConfirmed  # noqa: F401  (registers the type)

    events = await aws.client("events")
    sqs = await aws.client("sqs")
    url = (await sqs.create_queue(QueueName=f"{bus}-tap"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
           )["Attributes"]["QueueArn"]
    await events.put_rule(Name=f"{bus}-tap", EventBusName=bus, EventPattern=json.dumps(
        {"detail-type": ["OrderConfirmed"], "detail": {"data": {"order_id": [order_id]}}}))
    await events.put_targets(Rule=f"{bus}-tap", EventBusName=bus,
                             Targets=[{"Id": "tap", "Arn": arn}])
    bus_arn = (await events.describe_event_bus(Name=bus))["Arn"]
    now = datetime.now(UTC)
    name = await start_replay(aws, archive_arn=(await events.describe_archive(
        ArchiveName=f"{bus}-archive"))["ArchiveArn"], bus_arn=bus_arn,
        window=check_window(now - timedelta(hours=1), now, retention_days=30,
                            now=time.time()),
        filter_arns=[(await events.describe_rule(Name=f"{bus}-tap", EventBusName=bus))["Arn"]])
    assert await wait_replay(aws, name, within=10) == "COMPLETED"
    got = (await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)).get("Messages", [])
    assert len(got) == 1, got
    return str(got[0]["Body"])

