"""The embedded emulator's throughput fixes (`shared.emulator.fixes`) answer what moto
answers. In process, no server: the serializer is a pure function of the operation's shape
and the result, and a Kinesis shard is a data structure.

- the serializer: the same responses, byte for byte, with moto's own alias search and with
  the search worked out once per member; a page of stream records encoded directly is the
  same JSON document as the serializer's;
- Kinesis: reads from every position, with and without a limit, and the first and last
  sequence numbers, the same as moto's walk over the whole shard."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

serialize = pytest.importorskip("moto.core.serialize")
moto_utils = pytest.importorskip("moto.core.utils")

from shared.emulator._fixes import restore  # noqa: E402
from shared.emulator.fixes import alias_search, kinesis_reads, stream_pages  # noqa: E402

ITEM = {
    "device_id": {"S": "d-000001"},
    "version": {"N": "17"},
    "doc": {"S": '{"readings": {"temp": 21.5}}'},
    "alarms": {"M": {"temp": {"S": "high"}, "none": {"NULL": True}}},
    "tags": {"SS": ["a", "b"]},
    "history": {"L": [{"N": "1"}, {"BOOL": False}, {"M": {}}]},
}
STREAM_PAGE = {
    "NextShardIterator": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x|1|abc",
    "Records": [
        {
            "eventID": f"e{i}", "eventName": "MODIFY" if i else "INSERT",
            "eventSource": "aws:dynamodb", "eventVersion": "1.0", "awsRegion": "us-east-1",
            "dynamodb": {
                "StreamViewType": "NEW_IMAGE",
                "ApproximateCreationDateTime": dt.datetime(2026, 11, 23, 14, 0, i, 250000),
                "SequenceNumber": str(1100000000017454423009 + i), "SizeBytes": 321,
                "Keys": {"device_id": ITEM["device_id"]}, "NewImage": ITEM,
            },
        }
        for i in range(3)
    ],
}
KINESIS_PAGE = {
    "NextShardIterator": "it-2", "MillisBehindLatest": 0,
    "Records": [{"SequenceNumber": "1", "PartitionKey": "d-1", "Data": b"{}",
                 "ApproximateArrivalTimestamp": dt.datetime(2026, 11, 23, 14, 0, 0)}],
}
CASES = [
    ("dynamodbstreams", "GetRecords", STREAM_PAGE),
    ("dynamodb", "GetItem", {"Item": ITEM}),
    ("dynamodb", "Query", {"Items": [ITEM, ITEM], "Count": 2, "ScannedCount": 2}),
    ("kinesis", "GetRecords", KINESIS_PAGE),
]


def serialized(service: str, operation: str, result: dict[str, Any]) -> Any:
    model = moto_utils.get_service_model(service)
    operation_model = model.operation_model(operation)
    serializer_class = serialize.get_serializer_class(service, model.protocol)
    serializer = serializer_class(operation_model=operation_model, pretty_print=False,
                                  value_picker=serialize.XFormedAttributePicker())
    return serializer.serialize(result)["body"]


@pytest.fixture
def fixed() -> Iterator[None]:
    saved = serialize.ResponseSerializer.get_value
    alias_search.apply()
    assert serialize.ResponseSerializer.get_value is not saved
    try:
        yield
    finally:
        restore(serialize.ResponseSerializer, "get_value")
    assert serialize.ResponseSerializer.get_value is saved


@pytest.mark.parametrize(("service", "operation", "result"), CASES,
                         ids=[f"{s}.{o}" for s, o, _ in CASES])
def test_the_fixed_serializer_answers_what_moto_answers(
    service: str, operation: str, result: dict[str, Any], request: pytest.FixtureRequest,
) -> None:
    before = serialized(service, operation, result)
    request.getfixturevalue("fixed")
    assert serialized(service, operation, result) == before
    assert serialized(service, operation, result) == before  # answered from the cache too
    assert "d-000001" in str(before) or "it-2" in str(before)  # a real body, not an empty one


def test_a_stream_page_encoded_directly_is_the_serializers_document() -> None:
    import json

    direct = stream_pages.stream_page_json(STREAM_PAGE)
    assert direct is not None
    assert json.loads(direct) == json.loads(
        serialized("dynamodbstreams", "GetRecords", STREAM_PAGE))
    whole_second = {**STREAM_PAGE, "Records": [{**STREAM_PAGE["Records"][0], "dynamodb": {
        **STREAM_PAGE["Records"][0]["dynamodb"],
        "ApproximateCreationDateTime": dt.datetime(2026, 11, 23, 14, 0, 0)}}]}
    assert json.loads(stream_pages.stream_page_json(whole_second) or "") == json.loads(
        serialized("dynamodbstreams", "GetRecords", whole_second))
    binary = {"Records": [{"dynamodb": {"Keys": {"k": {"B": "AAE="}}}}]}
    assert stream_pages.stream_page_json(binary) is None  # left to the serializer


kinesis_models = pytest.importorskip("moto.kinesis.models")


@pytest.fixture
def kinesis_fixed() -> Iterator[Any]:
    shard_class = kinesis_models.Shard
    saved = {name: getattr(shard_class, name) for name in
             ("get_records", "get_max_sequence_number", "get_min_sequence_number")}
    kinesis_reads.apply()
    assert shard_class.get_records is not saved["get_records"]
    try:
        yield saved
    finally:
        for name in saved:
            restore(shard_class, name)
    assert shard_class.get_records is saved["get_records"]


def test_a_kinesis_shard_reads_what_moto_reads_from_every_position(
    kinesis_fixed: dict[str, Any],
) -> None:
    shard = kinesis_models.Shard(0, 0, 2**128)
    for n in range(25):
        assert shard.put_record(f"d-{n}", f"data {n}", "") == str(n + 1)
    for position in range(-1, 28):
        for limit in (None, 1, 7, 100):
            fixed = shard.get_records(str(position), limit)
            moto = kinesis_fixed["get_records"](shard, str(position), limit)
            assert ([r.sequence_number for r in fixed[0]], fixed[1:]) == (
                [r.sequence_number for r in moto[0]], moto[1:]), (position, limit)
    assert shard.get_max_sequence_number() == 25
    assert shard.get_min_sequence_number() == 1
    assert kinesis_models.Shard(1, 0, 1).get_max_sequence_number() == 0
