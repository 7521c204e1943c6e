"""Alarms from the device-events bus to the alarms topic's subscribers, on the real template
(deploy/template.yaml) deployed to the emulator: rule AlarmPublishRule -> AlarmPublishQueue
-> the alarm publisher Lambda (services.devices.alarms) -> SNS AlarmsTopic -> the filtered
subscriptions AlarmNotificationsQueue (critical / major) and AlarmAuditQueue (any tenant)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from services.devices.alarms import build_handler
from services.devices.events import DeviceView, Severity, Status, ThresholdBreached
from shared.aws import AwsClients
from shared.cloudformation import DEFAULT_TEMPLATE, load_template, statemachines_dir
from shared.config import Resources
from shared.deployment import Deployment, DeploySettings, deploy, local_parameters
from shared.events import Envelope, to_put_events_entry
from shared.hosts.lambda_ import LambdaRuntime, sqs_handler
from shared.local import GapPlan, plan_gaps
from shared.local._stack import describe_stack, gather_facts
from shared.local._supply import apply_api_gaps, plan_processes

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

STACK = "fl-alarms"
TEMPLATE = Path(__file__).resolve().parents[2] / DEFAULT_TEMPLATE
PUBLISHER = "AlarmPublisherFunction-triggers"  # the local runner's name for its process


@dataclass
class Stack:
    deployment: Deployment
    plan: GapPlan  # what the local runner supplies for the template on this stack

    async def resubscribe(self, aws: AwsClients) -> None:
        """The template's SNS subscriptions (and queue policies), (re)created as `up` does."""
        _, problems = await apply_api_gaps(aws, self.plan)
        assert not problems, problems

    def url(self, output_key: str) -> str:
        return self.deployment.outputs[output_key]

    def dlq(self, logical_id: str) -> str:
        return self.deployment.physical_id(logical_id)


@pytest.fixture
async def stack(aws: AwsClients) -> Stack:
    deployment = await deploy(aws, DeploySettings(
        stack_name=STACK, template=TEMPLATE, parameters=local_parameters(zone="eu"),
        artifact_bucket=f"{STACK}-artifacts", timeout=60.0, emulator=True,
    ))
    template = load_template(TEMPLATE)
    described = await describe_stack(aws, STACK)
    assert described is not None
    facts = await gather_facts(aws, template, described)
    stack = Stack(deployment, plan_gaps(template, facts,
                                        statemachines_dir=statemachines_dir(TEMPLATE)))
    await stack.resubscribe(aws)
    return stack


def alarm(device: str, severity: Severity, tenant: str = "t-001") -> Envelope:
    view = DeviceView(device_id=device, tenant_id=tenant, zone="eu", status=Status.ONLINE,
                      seq=5, last_seen=time.time(), readings={"temperature": 91.0},
                      alarms={"temperature": severity})
    data = ThresholdBreached(device=view, metric="temperature", value=91.0, limit=80.0,
                             bound="max", severity=severity)
    return Envelope.new(data, aggregate_id=device, sequence=5, tenant_id=tenant)


async def put_on_bus(aws: AwsClients, stack: Stack, *envelopes: Envelope) -> None:
    events = await aws.client("events")
    bus = stack.url("DeviceEventsBusName")
    answer = await events.put_events(Entries=[to_put_events_entry(e, bus) for e in envelopes])
    assert answer["FailedEntryCount"] == 0


async def drain(aws: AwsClients, url: str) -> list[dict[str, Any]]:
    """Every message now visible in the queue, with attributes (deleted as read)."""
    sqs = await aws.client("sqs")
    got: list[dict[str, Any]] = []
    while True:
        answer = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30,
            MessageAttributeNames=["All"], AttributeNames=["All"])
        messages = answer.get("Messages", [])
        if not messages:
            return got
        got.extend(messages)
        await sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


async def collect(aws: AwsClients, url: str, *, count: int, within: float = 20.0
                  ) -> list[dict[str, Any]]:
    """Messages from `url` until there are `count` (or the deadline)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got.extend(await drain(aws, url))
        await anyio.sleep(0.1)
    return got


def alarm_attributes(message: dict[str, Any]) -> dict[str, str]:
    """The SNS message attributes as the raw-delivery subscriber sees them."""
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()
            if k in {"tenant", "severity", "type", "event_id"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def publisher_process(aws: AwsClients, stack: Stack) -> AsyncIterator[Process]:
    """The alarm publisher as `fleetline up` runs it: the process the local runner plans
    from the template's event source mapping, with the function's deployed environment."""
    processes = await plan_processes(aws, stack.plan, base_env=dict(os.environ),
                                     free_port=free_port, stack_name=STACK)
    specs = {spec.name: spec for spec in processes.specs}
    assert PUBLISHER in specs, processes.skipped
    spec = specs[PUBLISHER]
    assert spec.env["FLEETLINE_ALARMS_TOPIC"] == stack.url("AlarmsTopic")
    process = await anyio.open_process(list(spec.argv), env=dict(spec.env))
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(15):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_alarms_on_the_bus_reach_the_subscriptions_that_filter_on_them(
    aws: AwsClients, stack: Stack, publisher_process: Process,
) -> None:
    critical = alarm("d-hot", Severity.CRITICAL, tenant="t-001")
    warning = alarm("d-low", Severity.WARNING, tenant="t-002")
    await put_on_bus(aws, stack, critical, warning)

    # Every alarm with a tenant reaches the audit queue...
    audit = await collect(aws, stack.url("AlarmAuditQueue"), count=2)
    by_id = {json.loads(m["Body"])["id"]: m for m in audit}
    assert set(by_id) == {critical.id, warning.id}
    assert alarm_attributes(by_id[critical.id]) == {
        "tenant": "t-001", "severity": "critical", "type": "ThresholdBreached",
        "event_id": critical.id}
    assert alarm_attributes(by_id[warning.id]) == {
        "tenant": "t-002", "severity": "warning", "type": "ThresholdBreached",
        "event_id": warning.id}
    body = json.loads(by_id[critical.id]["Body"])  # raw delivery: the envelope itself
    assert body["type"] == "ThresholdBreached"
    assert body["data"]["device"]["device_id"] == "d-hot"

    # ... and only the critical one the notifications queue (severity critical / major).
    # SNS fans out to both subscriptions in the same publish, so once the audit queue has
    # the warning, the notifications queue would have it too if the filter let it through.
    notified = await drain(aws, stack.url("AlarmNotificationsQueue"))
    assert [json.loads(m["Body"])["id"] for m in notified] == [critical.id]
    assert alarm_attributes(notified[0])["severity"] == "critical"

    assert await drain(aws, stack.dlq("AlarmPublishDlq")) == []
    assert await drain(aws, stack.dlq("DeviceEventsBusTargetDlq")) == []


def lambda_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event an SQS event source mapping hands the function."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m.get("Attributes", {}), "messageAttributes": {},
        "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "awsRegion": "us-east-1",
    } for m in messages]}


async def receive_one(aws: AwsClients, url: str, within: float = 20.0) -> dict[str, Any]:
    """The next message of `url` (left in the queue, invisible for 30 s)."""
    sqs = await aws.client("sqs")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1,
                                           WaitTimeSeconds=1, VisibilityTimeout=30,
                                           AttributeNames=["All"])
        if answer.get("Messages"):
            return dict(answer["Messages"][0])
    raise AssertionError(f"nothing arrived in {url} within {within} s")


async def test_an_alarm_sns_does_not_take_is_retried_and_not_lost(
    aws: AwsClients, stack: Stack,
) -> None:
    """The Lambda as its mapping calls it, one delivery at a time: while the topic is gone
    the message is reported failed and stays in the queue (not in the DLQ); once the topic
    is back, the next delivery publishes it."""
    runtime = LambdaRuntime(resources=Resources.from_outputs(stack.deployment.outputs))
    entry = sqs_handler(setup=build_handler, runtime=runtime, rng=random.Random(7))
    sqs, sns = await aws.client("sqs"), await aws.client("sns")
    queue_url = stack.url("AlarmPublishQueue")
    queue_arn = (await sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    try:
        await sns.delete_topic(TopicArn=stack.url("AlarmsTopic"))  # an outage of the topic
        critical = alarm("d-hot", Severity.CRITICAL)
        await put_on_bus(aws, stack, critical)

        first = await receive_one(aws, queue_url)
        answer = await anyio.to_thread.run_sync(entry, lambda_event([first], queue_arn), None)
        assert answer == {"batchItemFailures": [{"itemIdentifier": first["MessageId"]}]}
        assert await drain(aws, stack.dlq("AlarmPublishDlq")) == []
        assert await drain(aws, stack.url("AlarmAuditQueue")) == []

        created = await sns.create_topic(Name=f"{STACK}-alarms")  # same name, same ARN
        assert created["TopicArn"] == stack.url("AlarmsTopic")
        await stack.resubscribe(aws)

        second = await receive_one(aws, queue_url)  # visible again after the backoff
        assert second["MessageId"] == first["MessageId"]
        assert int(second["Attributes"]["ApproximateReceiveCount"]) == 2
        answer = await anyio.to_thread.run_sync(entry, lambda_event([second], queue_arn), None)
        assert answer == {"batchItemFailures": []}
        await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=second["ReceiptHandle"])

        notified = await collect(aws, stack.url("AlarmNotificationsQueue"), count=1)
        assert [alarm_attributes(m)["event_id"] for m in notified] == [critical.id]
        assert await drain(aws, stack.dlq("AlarmPublishDlq")) == []
    finally:
        runtime.close()
