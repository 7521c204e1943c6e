"""The template deployed to the emulator through `shared.deployment`: every resource is
there (or is a named emulator gap), and the wiring works (bus -> rule -> queue, and only for
matching events). The dashboard rule targets an SNS topic (moto's EventBridge cannot
deliver to one; the embedded emulator can, `shared.emulator`): a queue subscribed
to the topic, as each dashboard task subscribes its own, stands for the topic."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from shared.aws import AwsClients
from shared.cloudformation import DEFAULT_TEMPLATE, load_template
from shared.deployment import (
    Deployment,
    DeploymentError,
    DeploySettings,
    TemplateInvalidError,
    deploy,
    local_parameters,
)

pytestmark = pytest.mark.emulator

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TEMPLATE = Path(__file__).resolve().parents[2] / DEFAULT_TEMPLATE
READY_BUDGET_SECONDS = 30.0  # the whole `fleetline up` must be ready within this

# Resource types moto's CloudFormation accepts without creating anything: the stack still
# ends CREATE_COMPLETE and lists them with neither logical id nor physical id.
KNOWN_GAPS = {
    "AWS::SQS::QueuePolicy": "not created; the emulator does not enforce resource policies",
    "AWS::S3::BucketPolicy": "not created; the emulator does not enforce resource policies",
    "AWS::SNS::Subscription": "not created; the local runner subscribes from the template",
    "AWS::Pipes::Pipe": "not created (and Pipes move no data); the local runner relays",
    "AWS::IoT::TopicRule": "not created (no MQTT broker); the simulator writes where rules would",
    "AWS::Scheduler::Schedule": "not created; heartbeats are put by the local runner if at all",
    "AWS::ApiGatewayV2::Api": "not created; the local runner serves the handler over HTTP",
    "AWS::ApiGatewayV2::Integration": "not created; see AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Route": "not created; see AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Stage": "not created; see AWS::ApiGatewayV2::Api",
    "AWS::CloudWatch::Alarm": "not created; alarms are for AWS only",
    "AWS::SecretsManager::Secret": "not created; locally the dashboard uses its dev secret",
    "AWS::SNS::TopicPolicy": "not created; the emulator does not enforce resource policies",
    "AWS::Glue::Database": "not created; the local runner creates it through the API",
    "AWS::Glue::Table": "not created; the local runner creates it through the API",
    "AWS::KinesisFirehose::DeliveryStream": "not created; the local runner creates it "
                                            "through the API",
    "AWS::Athena::WorkGroup": "not created; locally the report runs on DuckDB",
    "AWS::Logs::LogStream": "not created; Firehose's error log on AWS only",
    "AWS::ApplicationAutoScaling::ScalableTarget": "not created; nothing scales locally",
    "AWS::ApplicationAutoScaling::ScalingPolicy": "not created; see ScalableTarget",
}
# Created, but listed without a physical id.
CREATED_WITHOUT_PHYSICAL_ID = {"AWS::Events::EventBus", "AWS::Events::Archive",
                               "AWS::Lambda::Permission"}

# What each bus delivers where: (source, detail-type) -> queues that must receive it (and
# no other event-fed queue may).
ORDERS_ROUTES = {
    ("fleetline.orders", "OrderPlaced"): {"SagaStartQueue", "OrderHistoryQueue"},
    ("fleetline.orders", "OrderConfirmed"): {"NotificationsQueue", "OrderHistoryQueue",
                                             "SalesProjectionQueue"},
    ("fleetline.orders", "OrderCancelled"): {"NotificationsQueue", "OrderHistoryQueue",
                                             "SalesProjectionQueue"},
    ("fleetline.orders", "OrderShipped"): set(),  # no rule wants it
    ("someone.else", "OrderPlaced"): set(),  # right type, wrong source
}
DASHBOARD_FEED = "DashboardFeedTopic (a subscribed queue)"
DEVICE_ROUTES = {
    ("fleetline.devices", "DeviceConnected"): {"DeviceProjectionQueue", DASHBOARD_FEED},
    ("fleetline.devices", "ThresholdBreached"): {"DeviceProjectionQueue", DASHBOARD_FEED,
                                                 "AlarmPublishQueue"},
    ("fleetline.devices", "ThresholdCleared"): {"DeviceProjectionQueue", DASHBOARD_FEED,
                                                "AlarmPublishQueue"},
    ("fleetline.orders", "DeviceConnected"): set(),
}
EVENT_FED_QUEUES = {q for routes in (ORDERS_ROUTES, DEVICE_ROUTES)
                    for qs in routes.values() for q in qs}


def template_resources(parameters: Mapping[str, str] | None = None) -> dict[str, str]:
    """The template's resources; with `parameters`, those CloudFormation creates for them
    (a resource whose `Condition` is false is not in the stack: the global endpoint where
    GlobalEndpoint=disabled)."""
    from shared.local import StackFacts
    from shared.local._template import condition_holds

    decoded = load_template(TEMPLATE)  # the one loader; raises on what cfn-lint flags
    facts = StackFacts.from_stack_id(
        "arn:aws:cloudformation:us-east-1:123456789012:stack/fl-test/x", stack_name="fl-test",
        physical={}, parameters=parameters or {})
    return {lid: str(r["Type"]) for lid, r in decoded["Resources"].items()
            if parameters is None or condition_holds(r, decoded, facts)}


async def deploy_stack(aws: AwsClients) -> Deployment:
    return await deploy(aws, DeploySettings(
        stack_name="fl-test", template=TEMPLATE, parameters=local_parameters(zone="eu"),
        artifact_bucket="fl-test-artifacts", timeout=60.0, emulator=True,
    ))


async def drain(aws: AwsClients, url: str) -> list[dict[str, Any]]:
    """Everything currently in the queue (deleted as read)."""
    sqs = await aws.client("sqs")
    got: list[dict[str, Any]] = []
    while True:
        answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0, VisibilityTimeout=30)
        messages = answer.get("Messages", [])
        if not messages:
            return got
        got.extend(json.loads(m["Body"]) for m in messages)
        await sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


async def received_by(aws: AwsClients, urls: dict[str, str], marker: str,
                      expected: set[str], wait_for: float = 5.0) -> set[str]:
    """Queues that hold the event `marker`, polled until `expected` all have it (or the
    deadline), then once more so that extra deliveries show up too."""
    seen: set[str] = set()
    deadline = time.monotonic() + wait_for
    while True:
        for queue in EVENT_FED_QUEUES:
            for body in await drain(aws, urls[queue]):
                if body.get("detail", {}).get("marker") == marker:
                    seen.add(queue)
        if expected <= seen or time.monotonic() > deadline:
            return seen
        await anyio.sleep(0.05)


async def test_template_deploys_with_every_resource_and_routes_events(
    aws: AwsClients,
) -> None:
    started = time.monotonic()
    deployment = await deploy_stack(aws)
    elapsed = time.monotonic() - started
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "deploy-timing.json").write_text(json.dumps(
        {"seconds": round(elapsed, 2), "resources": len(deployment.stack_resources)}))
    assert deployment.status == "CREATE_COMPLETE"
    assert elapsed < READY_BUDGET_SECONDS, f"deployment took {elapsed:.1f} s"

    # Every resource of the template is in the stack, or is a named gap.
    expected = template_resources(deployment.parameters)
    listed = {r.logical_id: r for r in deployment.stack_resources if r.logical_id}
    gaps = {lid for lid, kind in expected.items() if kind in KNOWN_GAPS}
    assert set(listed) == set(expected) - gaps
    anonymous = [r for r in deployment.stack_resources if not r.logical_id]
    # moto lists each resource it did not create, a gap or one whose condition is false,
    # without its logical id
    assert len(anonymous) == len(template_resources()) - len(listed)
    for lid, resource in listed.items():
        assert resource.resource_type == expected[lid], lid
        if resource.resource_type not in CREATED_WITHOUT_PHYSICAL_ID:
            assert resource.physical_id, f"{lid} has no physical id"

    # Outputs became Resources by the shared.config rule; the names carry the stack name.
    assert deployment.resources.get("OrdersTable") == "fl-test-orders"
    assert deployment.resources.get("DeviceEventsBusName") == "fl-test-device-events"
    assert deployment.parameters["ResidencyZone"] == "eu"

    # The resources are real: the bus, the table stream, the stream encryption.
    events = await aws.client("events")
    bus = await events.describe_event_bus(Name=deployment.outputs["OrdersBusName"])
    assert bus["Name"] == "fl-test-orders"
    dynamodb = await aws.client("dynamodb")
    table = (await dynamodb.describe_table(TableName="fl-test-orders"))["Table"]
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    sqs = await aws.client("sqs")
    attributes = (await sqs.get_queue_attributes(
        QueueUrl=deployment.outputs["InventoryTasksQueue"], AttributeNames=["All"]))["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 3

    # The dashboard rule's topic, heard by a queue subscribed as a dashboard task's is.
    urls = {q: deployment.outputs[q] for q in EVENT_FED_QUEUES if q != DASHBOARD_FEED}
    urls[DASHBOARD_FEED] = (await sqs.create_queue(QueueName="fl-test-feed-probe"))["QueueUrl"]
    probe_arn = (await sqs.get_queue_attributes(
        QueueUrl=urls[DASHBOARD_FEED], AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    sns = await aws.client("sns")
    await sns.subscribe(TopicArn=deployment.outputs["DashboardFeedTopic"], Protocol="sqs",
                        Endpoint=probe_arn, Attributes={"RawMessageDelivery": "true"})

    # Wiring: each event reaches exactly the queues whose rules match it.
    for bus_key, routes in (("OrdersBusName", ORDERS_ROUTES),
                            ("DeviceEventsBusName", DEVICE_ROUTES)):
        for (source, detail_type), queues in routes.items():
            marker = uuid.uuid4().hex
            answer = await events.put_events(Entries=[{
                "EventBusName": deployment.outputs[bus_key], "Source": source,
                "DetailType": detail_type, "Detail": json.dumps({"marker": marker}),
            }])
            assert answer["FailedEntryCount"] == 0
            got = await received_by(aws, urls, marker, queues,
                                    wait_for=5.0 if queues else 0.3)
            assert got == queues, f"{source}/{detail_type} on {bus_key}"

    # moto's own run of the SQS event source mapping is switched off (emulator=True): it
    # would receive on every send, fail to invoke, and dead-letter after maxReceiveCount.
    saga_start = deployment.outputs["SagaStartQueue"]
    for i in range(7):  # more sends than maxReceiveCount (5)
        await sqs.send_message(QueueUrl=saga_start, MessageBody=json.dumps({"n": i}))
    assert len(await drain(aws, saga_start)) == 7
    assert await drain(aws, deployment.physical_id("SagaStartDlq")) == []

    # Deploying the same thing again keeps the stack (an update, or "no updates").
    again = await deploy_stack(aws)
    assert again.stack_id == deployment.stack_id
    assert again.outputs == deployment.outputs


async def test_a_template_that_is_not_yaml_gives_one_line_saying_what_to_do(
    aws: AwsClients, tmp_path: Path,
) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text("Resources:\n  Queue:\n    Type: AWS::SQS::Queue\n   Properties: [\n")
    with pytest.raises(TemplateInvalidError) as info:
        await deploy(aws, DeploySettings(stack_name="broken", template=broken,
                                         artifact_bucket="broken-artifacts"))
    message = str(info.value)
    assert "\n" not in message
    assert "line" in message
    assert "cfn-lint" in message


async def test_a_template_cloudformation_refuses_gives_one_line_naming_the_problem(
    aws: AwsClients, tmp_path: Path,
) -> None:
    bad = tmp_path / "template.yaml"
    bad.write_text(
        "Resources:\n"
        "  Queue:\n"
        "    Type: AWS::SQS::Queue\n"
        "    Properties:\n"
        "      RedrivePolicy:\n"
        "        deadLetterTargetArn: !GetAtt Missing.Arn\n"
        "        maxReceiveCount: 5\n"
    )
    with pytest.raises(DeploymentError) as info:
        await deploy(aws, DeploySettings(stack_name="refused", template=bad,
                                         artifact_bucket="refused-artifacts"))
    message = str(info.value)
    assert "\n" not in message
    assert "Missing" in message
    assert "cfn-lint" in message
