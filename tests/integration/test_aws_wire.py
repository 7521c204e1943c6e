"""shared._wire against the emulator: a caller-encoded body is what the service receives
(whether the client validates parameters or not), a caller-decoded response is the wire JSON,
errors still raise (typed: a failed condition, a cancelled transaction), and other calls on
the same client are untouched."""

from __future__ import annotations

import base64

import anyio
import orjson
import pytest
from botocore.exceptions import ClientError, ParamValidationError

from shared.aws import AwsClients, ClientSettings, aws_errors, call_decoded
from shared.errors import AwsRequestError, ConditionFailedError, TransactionCanceledError

pytestmark = pytest.mark.emulator


async def _table(aws: AwsClients, name: str) -> None:
    dynamodb = await aws.client("dynamodb")
    await dynamodb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )


def _put(table: str, pk: str, value: str) -> dict[str, object]:
    return {"Put": {"TableName": table, "Item": {"pk": {"S": pk}, "v": {"S": value}}}}


async def test_send_encoded_writes_exactly_the_body_given(aws: AwsClients) -> None:
    await _table(aws, "wire")
    dynamodb = await aws.client("dynamodb")
    body = orjson.dumps({"TransactItems": [_put("wire", f"k{i}", f"v{i}") for i in range(3)]})
    before = aws.counter.snapshot().get("dynamodb.TransactWriteItems", 0)

    await aws.send_encoded("dynamodb", "TransactWriteItems", body)

    items = (await dynamodb.scan(TableName="wire"))["Items"]
    assert sorted((i["pk"]["S"], i["v"]["S"]) for i in items) == [
        ("k0", "v0"), ("k1", "v1"), ("k2", "v2")]
    assert aws.counter.snapshot()["dynamodb.TransactWriteItems"] == before + 1


async def test_a_refused_encoded_body_raises_like_the_client(aws: AwsClients) -> None:
    await _table(aws, "wire")
    dynamodb = await aws.client("dynamodb")
    await dynamodb.put_item(TableName="wire", Item={"pk": {"S": "k"}, "v": {"S": "old"}})
    conditional = {"TransactItems": [{"Put": {
        "TableName": "wire", "Item": {"pk": {"S": "k"}, "v": {"S": "new"}},
        "ConditionExpression": "attribute_not_exists(pk)"}}]}

    with pytest.raises(AwsRequestError) as caught, aws_errors():
        await aws.send_encoded("dynamodb", "TransactWriteItems", orjson.dumps(conditional))

    assert caught.value.code == "TransactionCanceledException"
    item = (await dynamodb.get_item(TableName="wire", Key={"pk": {"S": "k"}}))["Item"]
    assert item["v"]["S"] == "old"


async def test_the_same_call_without_the_override_sends_nothing_to_write(
    aws: AwsClients,
) -> None:
    """What `send_encoded` relies on to fail safe: with no parameters botocore sends `{}`,
    which the service refuses."""
    await _table(aws, "wire")
    dynamodb = await aws.client("dynamodb")
    with pytest.raises(ClientError):
        await dynamodb.transact_write_items()
    assert (await dynamodb.scan(TableName="wire"))["Items"] == []


async def test_call_decoded_returns_the_wire_json_and_leaves_other_calls_alone(
    aws: AwsClients,
) -> None:
    kinesis = await aws.client("kinesis")
    await kinesis.create_stream(StreamName="wire", ShardCount=1)
    for _ in range(100):
        summary = await kinesis.describe_stream_summary(StreamName="wire")
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            break
        await anyio.sleep(0.05)
    await kinesis.put_records(StreamName="wire", Records=[
        {"Data": f"record {i}".encode(), "PartitionKey": "p"} for i in range(5)])
    shard = (await kinesis.list_shards(StreamName="wire"))["Shards"][0]["ShardId"]

    async def iterator() -> str:
        response = await kinesis.get_shard_iterator(
            StreamName="wire", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        return str(response["ShardIterator"])

    decoded, parsed = {}, {}

    async def raw() -> None:
        decoded.update(await call_decoded(kinesis, "GetRecords", ShardIterator=await iterator(),
                                          Limit=100))

    async def plain() -> None:
        parsed.update(await kinesis.get_records(ShardIterator=await iterator(), Limit=100))

    async with anyio.create_task_group() as tg:  # concurrently, on the same client
        tg.start_soon(raw)
        tg.start_soon(plain)

    raw_records = decoded["Records"]
    assert [base64.b64decode(r["Data"]) for r in raw_records] == [
        f"record {i}".encode() for i in range(5)]
    assert all(isinstance(r["ApproximateArrivalTimestamp"], (int, float)) for r in raw_records)
    assert decoded["NextShardIterator"]
    assert decoded["ResponseMetadata"]["HTTPStatusCode"] == 200
    # the plain call next to it was parsed by botocore as usual
    assert [r["Data"] for r in parsed["Records"]] == [f"record {i}".encode() for i in range(5)]
    assert [r["ApproximateArrivalTimestamp"].timestamp() for r in parsed["Records"]] == [
        pytest.approx(r["ApproximateArrivalTimestamp"]) for r in raw_records]


async def test_call_decoded_error_responses_raise(aws: AwsClients) -> None:
    kinesis = await aws.client("kinesis")
    with pytest.raises(AwsRequestError), aws_errors():
        await call_decoded(kinesis, "DescribeStreamSummary", StreamName="no-such-stream")


async def test_send_encoded_does_not_depend_on_parameter_validation_being_off(
    emulator: object,
) -> None:
    """With botocore's parameter validation ON, the encoded body is checked like any call
    and sent as given: a binary value is written once, not base64-encoded a second time;
    a body the model refuses raises before anything is sent."""
    async with AwsClients(ClientSettings(parameter_validation=True)) as aws:
        await _table(aws, "wire")
        dynamodb = await aws.client("dynamodb")
        item = {"pk": {"S": "k"}, "blob": {"B": base64.b64encode(b"\x00\xff").decode()}}
        await aws.send_encoded("dynamodb", "TransactWriteItems", orjson.dumps(
            {"TransactItems": [{"Put": {"TableName": "wire", "Item": item}}]}))
        stored = (await dynamodb.get_item(TableName="wire", Key={"pk": {"S": "k"}}))["Item"]
        assert stored["blob"]["B"] == b"\x00\xff"

        before = aws.counter.snapshot().get("dynamodb.TransactWriteItems", 0)
        with pytest.raises(ParamValidationError):
            await aws.send_encoded("dynamodb", "TransactWriteItems", orjson.dumps(
                {"TransactItems": [{"Put": {"Item": item}}]}))  # no TableName
        assert aws.counter.snapshot().get("dynamodb.TransactWriteItems", 0) == before


async def test_a_failed_condition_and_a_cancelled_transaction_are_typed(aws: AwsClients) -> None:
    await _table(aws, "wire")
    dynamodb = await aws.client("dynamodb")
    await dynamodb.put_item(TableName="wire", Item={"pk": {"S": "k"}, "v": {"S": "old"}})
    with pytest.raises(ConditionFailedError) as failed, aws_errors():
        await dynamodb.put_item(TableName="wire", Item={"pk": {"S": "k"}, "v": {"S": "new"}},
                                ConditionExpression="attribute_not_exists(pk)",
                                ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert failed.value.item == {"pk": {"S": "k"}, "v": {"S": "old"}}
    assert isinstance(failed.value, AwsRequestError)
    assert not failed.value.retryable

    conditional = {"TransactItems": [
        {"Put": {"TableName": "wire", "Item": {"pk": {"S": "fresh"}}}},
        {"Put": {"TableName": "wire", "Item": {"pk": {"S": "k"}},
                 "ConditionExpression": "attribute_not_exists(pk)",
                 "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}]}
    with pytest.raises(TransactionCanceledError) as cancelled:
        await aws.send_encoded("dynamodb", "TransactWriteItems", orjson.dumps(conditional))
    assert [r["Code"] for r in cancelled.value.reasons] == ["None", "ConditionalCheckFailed"]
    assert cancelled.value.reasons[1]["Item"]["v"] == {"S": "old"}
