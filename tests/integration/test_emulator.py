import json
import re
from typing import Any

import pytest

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError

pytestmark = pytest.mark.emulator


async def test_clients_reach_emulator_and_count_requests(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    before = aws.counter.total
    await sqs.create_queue(QueueName="probe")
    listed = await sqs.list_queues()
    assert any(url.endswith("/probe") for url in listed["QueueUrls"])
    assert aws.counter.total - before == 2
    assert aws.counter.snapshot()["sqs.CreateQueue"] >= 1


async def test_sdk_errors_are_translated(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    with pytest.raises(AwsRequestError) as info, aws_errors():
        await sqs.get_queue_url(QueueName="does-not-exist")
    assert info.value.code is not None
    assert not info.value.retryable


async def test_a_rule_delivers_to_a_topic_target_beside_a_queue_target(aws: AwsClients) -> None:
    """moto as shipped fails PutEvents (HTTP 500) when a matching rule targets an SNS topic;
    the embedded emulator (shared.local._moto_server) publishes the event to the topic as
    EventBridge does, and moto's own delivery to the rule's other targets is unchanged."""
    events, sns, sqs = await aws.client("events"), await aws.client("sns"), await aws.client("sqs")
    topic = (await sns.create_topic(Name="feed"))["TopicArn"]
    urls, arns = {}, {}
    for name in ("via-topic", "direct", "transformed"):
        urls[name] = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        arns[name] = (await sqs.get_queue_attributes(
            QueueUrl=urls[name], AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arns["via-topic"],
                        Attributes={"RawMessageDelivery": "true"})
    await events.create_event_bus(Name="bus")
    await events.put_rule(Name="all", EventBusName="bus",
                          EventPattern=json.dumps({"source": ["fleetline.test"]}))
    await events.put_targets(Rule="all", EventBusName="bus", Targets=[
        {"Id": "topic", "Arn": topic},
        {"Id": "queue", "Arn": arns["direct"]},
    ])
    transformed_topic = (await sns.create_topic(Name="transformed"))["TopicArn"]
    await sns.subscribe(TopicArn=transformed_topic, Protocol="sqs",
                        Endpoint=arns["transformed"], Attributes={"RawMessageDelivery": "true"})
    await events.put_rule(Name="shaped", EventBusName="bus",
                          EventPattern=json.dumps({"source": ["fleetline.test"]}))
    await events.put_targets(Rule="shaped", EventBusName="bus", Targets=[{
        "Id": "topic", "Arn": transformed_topic,
        "InputTransformer": {"InputPathsMap": {"device": "$.detail.device"},
                             "InputTemplate": '{"who": "<device>"}'}}])

    answer = await events.put_events(Entries=[{
        "Source": "fleetline.test", "DetailType": "Probe", "EventBusName": "bus",
        "Detail": json.dumps({"device": "d-1"})}])
    assert answer["FailedEntryCount"] == 0
    event_id = answer["Entries"][0]["EventId"]

    async def body(queue: str) -> dict[str, Any]:
        got = await sqs.receive_message(QueueUrl=urls[queue], WaitTimeSeconds=2)
        (message,) = got["Messages"]
        return dict(json.loads(message["Body"]))

    via_topic, direct = await body("via-topic"), await body("direct")
    assert via_topic == direct  # the same event document on both paths
    assert (via_topic["id"], via_topic["detail-type"], via_topic["detail"]) == (
        event_id, "Probe", {"device": "d-1"})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", via_topic["time"])
    assert await body("transformed") == {"who": "d-1"}
