import json
import re
from typing import Any

import anyio
import pytest

from shared.aws import AwsClients, aws_errors
from shared.emulator import Emulator, read_fixes
from shared.emulator.fixes import ALL
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


def test_the_emulator_applied_every_fix_the_stack_relies_on(emulator: Emulator) -> None:
    """What `fleetline up` and this suite run on: every gap fix and every speed fix applied
    (the lock's moto is one they were all verified with), none skipped."""
    report = read_fixes(emulator.endpoint_url)
    assert report == emulator.fixes
    assert report.applied == tuple(fix.name for fix in ALL)
    assert dict(report.skipped) == {}


async def test_sdk_errors_are_translated(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    with pytest.raises(AwsRequestError) as info, aws_errors():
        await sqs.get_queue_url(QueueName="does-not-exist")
    assert info.value.code is not None
    assert not info.value.retryable


async def test_a_rule_delivers_to_a_topic_target_beside_a_queue_target(aws: AwsClients) -> None:
    """moto as shipped fails PutEvents (HTTP 500) when a matching rule targets an SNS topic;
    the embedded emulator (shared.emulator.fixes.rule_targets) publishes the event to the topic as
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


async def _stream_length(aws: AwsClients, stream_arn: str) -> int:
    streams = await aws.client("dynamodbstreams")
    shard = (await streams.describe_stream(StreamArn=stream_arn))["StreamDescription"][
        "Shards"][0]["ShardId"]
    iterator = (await streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    return len((await streams.get_records(ShardIterator=iterator, Limit=1000))["Records"])


async def test_a_transaction_is_all_or_nothing_and_keeps_what_it_did_not_touch(
    aws: AwsClients,
) -> None:
    """The embedded emulator backs up the items a transaction touches, not whole tables (moto
    deep-copies each table and its stream per call, and its restore erased writes made
    meanwhile): a cancelled transaction leaves every item and the stream as they were."""
    dynamodb = await aws.client("dynamodb")
    table = await dynamodb.create_table(
        TableName="tx", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
    stream_arn = table["TableDescription"]["LatestStreamArn"]
    for pk in ("a", "c"):
        await dynamodb.put_item(TableName="tx", Item={"pk": {"S": pk}, "n": {"N": "0"}})
    put_b = {"Put": {"TableName": "tx", "Item": {"pk": {"S": "b"}}}}
    bump_a = {"Update": {"TableName": "tx", "Key": {"pk": {"S": "a"}},
                         "UpdateExpression": "SET n = :one",
                         "ExpressionAttributeValues": {":one": {"N": "1"}}}}

    async def items() -> dict[str, dict[str, Any]]:
        page = await dynamodb.scan(TableName="tx", ConsistentRead=True)
        return {i["pk"]["S"]: i for i in page["Items"]}

    before = await items()
    with pytest.raises(AwsRequestError) as info, aws_errors():
        await dynamodb.transact_write_items(TransactItems=[put_b, bump_a, {"Put": {
            "TableName": "tx", "Item": {"pk": {"S": "c"}, "n": {"N": "9"}},
            "ConditionExpression": "attribute_not_exists(pk)"}}])
    assert info.value.code == "TransactionCanceledException"
    assert "[None, None, ConditionalCheckFailed]" in str(info.value)
    assert await items() == before
    assert await _stream_length(aws, stream_arn) == 2

    # A write that fails after the checks passed (a key of the wrong type) is undone too.
    with pytest.raises(AwsRequestError), aws_errors():
        await dynamodb.transact_write_items(TransactItems=[
            put_b, bump_a, {"Put": {"TableName": "tx", "Item": {"pk": {"N": "1"}}}}])
    assert await items() == before
    assert await _stream_length(aws, stream_arn) == 2

    bump_a_if_zero = {"Update": {**bump_a["Update"], "ConditionExpression": "n = :zero",
                                 "ExpressionAttributeValues": {":one": {"N": "1"},
                                                               ":zero": {"N": "0"}}}}
    await dynamodb.transact_write_items(TransactItems=[put_b, bump_a_if_zero])
    after = await items()
    assert set(after) == {"a", "b", "c"}
    assert after["a"]["n"] == {"N": "1"}
    assert await _stream_length(aws, stream_arn) == 4


async def test_concurrent_writes_to_one_item_lose_nothing(aws: AwsClients) -> None:
    """moto's server applies DynamoDB writes on request threads without a lock, so concurrent
    read-modify-writes of one item lost updates (355 and 373 of 400 in two runs); the embedded
    emulator applies writes one at a time, as DynamoDB applies each write to an item."""
    import anyio

    dynamodb = await aws.client("dynamodb")
    await dynamodb.create_table(
        TableName="counter", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    await dynamodb.put_item(TableName="counter", Item={"pk": {"S": "c"}, "n": {"N": "0"}})

    async def increment(times: int) -> None:
        for _ in range(times):
            await dynamodb.update_item(
                TableName="counter", Key={"pk": {"S": "c"}}, UpdateExpression="SET n = n + :one",
                ExpressionAttributeValues={":one": {"N": "1"}})

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(increment, 25)
    item = (await dynamodb.get_item(TableName="counter", Key={"pk": {"S": "c"}},
                                    ConsistentRead=True))["Item"]
    assert item["n"] == {"N": "400"}


async def test_a_callback_task_fails_with_a_map_runs_states_error(aws: AwsClients) -> None:
    """moto ends an execution with States.Runtime when a task token is failed with an error
    named `States.*`; the local Distributed Map reports its map run's errors that way, so the
    embedded emulator (shared.emulator.fixes.map_run_errors) lets those four reach the state's
    Retry and Catch (and keeps the cause, which moto's SendTaskFailure dropped:
    shared.emulator.fixes.task_failure_cause). Custom errors and other `States.*` names keep
    moto's behaviour."""
    sqs, sfn = await aws.client("sqs"), await aws.client("stepfunctions")
    queue = (await sqs.create_queue(QueueName="tokens"))["QueueUrl"]
    definition = {"StartAt": "Wait", "States": {
        "Wait": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                 "Parameters": {"QueueUrl": queue, "MessageBody": {"Token.$": "$$.Task.Token"}},
                 "Catch": [
                     {"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.caught",
                      "Next": "ByTaskFailed"},
                     {"ErrorEquals": ["States.ExceedToleratedFailureThreshold"],
                      "ResultPath": "$.caught", "Next": "ByName"}],
                 "End": True},
        "ByTaskFailed": {"Type": "Pass", "Result": "TaskFailed", "ResultPath": "$.by",
                         "End": True},
        "ByName": {"Type": "Pass", "Result": "name", "ResultPath": "$.by", "End": True}}}
    machine = (await sfn.create_state_machine(
        name="tokens", definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/r"))["stateMachineArn"]

    async def fail_with(error: str) -> dict[str, Any]:
        execution = (await sfn.start_execution(
            stateMachineArn=machine, name=re.sub(r"\W", "-", error), input="{}"))["executionArn"]
        received: dict[str, Any] = {}
        while not received.get("Messages"):
            received = await sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)
        message = received["Messages"][0]
        await sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        token = json.loads(message["Body"])["Token"]
        await sfn.send_task_failure(taskToken=token, error=error, cause="why")
        while True:
            described = await sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return dict(described)

    caught = await fail_with("States.ExceedToleratedFailureThreshold")
    assert caught["status"] == "SUCCEEDED"
    assert json.loads(caught["output"]) == {
        "caught": {"Error": "States.ExceedToleratedFailureThreshold", "Cause": "why"},
        "by": "name"}
    custom = await fail_with("Firmware.Rejected")
    assert json.loads(custom["output"]) == {
        "caught": {"Error": "Firmware.Rejected", "Cause": "why"}, "by": "TaskFailed"}
    other = await fail_with("States.Permissions")  # not a map run's error: moto's refusal
    assert (other["status"], other["error"]) == ("FAILED", "States.Runtime")


async def test_stopping_an_execution_that_waits_for_a_task_token_aborts_it(
    aws: AwsClients,
) -> None:
    """moto left an execution whose task waits for its token RUNNING after StopExecution;
    the embedded emulator (shared.emulator.fixes.stop_callbacks) wakes the task, and the
    execution ends ABORTED as on AWS. The token cannot be answered afterwards."""
    sqs, sfn = await aws.client("sqs"), await aws.client("stepfunctions")
    queue = (await sqs.create_queue(QueueName="waits"))["QueueUrl"]
    definition = {"StartAt": "Wait", "States": {"Wait": {
        "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": queue, "MessageBody": {"Token.$": "$$.Task.Token"}},
        "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}], "End": True},
        "Caught": {"Type": "Pass", "End": True}}}
    machine = (await sfn.create_state_machine(
        name="waits", definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/r"))["stateMachineArn"]
    execution = (await sfn.start_execution(
        stateMachineArn=machine, name="e", input="{}"))["executionArn"]
    received: dict[str, Any] = {}
    while not received.get("Messages"):
        received = await sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)
    token = json.loads(received["Messages"][0]["Body"])["Token"]
    await sfn.stop_execution(executionArn=execution)
    with anyio.fail_after(10):
        while True:
            described = await sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                break
            await anyio.sleep(0.05)
    assert described["status"] == "ABORTED"
    history = await sfn.get_execution_history(executionArn=execution)
    types = [e["type"] for e in history["events"]]
    assert types[-1] == "ExecutionAborted"
    assert "PassStateEntered" not in types  # a stopped execution runs no Catch
    with pytest.raises(AwsRequestError) as late, aws_errors():
        await sfn.send_task_success(taskToken=token, output="{}")
    assert late.value.code == "InvalidToken"
