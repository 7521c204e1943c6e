"""The Lambda adapters without AWS: events in, `batchItemFailures` / HTTP answers out."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from shared.consumers import (
    BatchResult,
    DeadLetter,
    DuplicateEvent,
    HandlerContext,
    Message,
    Outcome,
    SourceKind,
    batch_handler,
)
from shared.consumers.dynamodb_streams import message_from_dynamodb_record
from shared.consumers.kinesis import message_from_kinesis_record
from shared.consumers.sqs import message_from_sqs_record
from shared.errors import RetryableError
from shared.hosts.lambda_ import (
    HttpError,
    HttpRequest,
    HttpResponse,
    InvocationFailed,
    LambdaRuntime,
    dynamodb_stream_handler,
    eventbridge_handler,
    http_api_handler,
    kinesis_handler,
    sqs_handler,
)


@pytest.fixture
def runtime() -> Iterator[LambdaRuntime]:
    rt = LambdaRuntime()
    yield rt
    rt.close()


class Context:
    def __init__(self, remaining_ms: int = 60_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def sqs_record(n: int, *, group: str | None = None, receive_count: int = 1) -> dict[str, Any]:
    attributes = {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1700000000000",
                  "AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"}
    if group:
        attributes["MessageGroupId"] = group
    return {
        "messageId": f"m{n}", "receiptHandle": f"r{n}", "body": json.dumps({"n": n}),
        "attributes": attributes,
        "messageAttributes": {"tenant": {"stringValue": "t1", "dataType": "String"}},
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
    }


def kinesis_record(seq: int, data: bytes, key: str = "dev-1") -> dict[str, Any]:
    return {
        "kinesis": {"partitionKey": key, "sequenceNumber": str(seq),
                    "data": base64.b64encode(data).decode(),
                    "approximateArrivalTimestamp": 1700000000.5},
        "eventID": f"shardId-000000000001:{seq}", "eventSource": "aws:kinesis",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/telemetry",
    }


def test_sqs_record_becomes_a_message() -> None:
    m = message_from_sqs_record(sqs_record(1, group="g", receive_count=3))
    assert (m.id, m.receipt, m.receive_count, m.group_id) == ("m1", "r1", 3, "g")
    assert m.source is SourceKind.SQS
    assert m.attributes["tenant"] == "t1"
    assert m.attributes["AWSTraceHeader"].startswith("Root=")
    assert m.approximate_arrival == 1_700_000_000.0
    assert m.raw["MessageAttributes"]["tenant"]["StringValue"] == "t1"


def test_sqs_reports_failures_and_unattempted_group_members(runtime: LambdaRuntime) -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        if event["n"] in (2, 5):
            raise RetryableError("later")

    entry = sqs_handler(batch_handler(handle), backoff=None, dead_letter=False,
                        runtime=runtime)
    records = [sqs_record(n, group="a") for n in range(1, 4)] + [sqs_record(n) for n in (4, 5)]
    answer = entry({"Records": records}, Context())
    # m2 failed; m3 (same group, behind it) was not attempted; m5 failed on its own.
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m2"}, {"itemIdentifier": "m3"},
                                            {"itemIdentifier": "m5"}]}


def test_sqs_all_succeeded_is_an_empty_list(runtime: LambdaRuntime) -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        if event["n"] == 2:
            raise DuplicateEvent("e2")

    entry = sqs_handler(batch_handler(handle), runtime=runtime)
    assert entry({"Records": [sqs_record(1), sqs_record(2)]}, Context()) == {
        "batchItemFailures": []}


def test_setup_builds_the_handler_once_per_container(runtime: LambdaRuntime) -> None:
    built: list[int] = []

    def setup(aws: Any, resources: Any) -> Any:
        built.append(1)

        async def handler(messages: Sequence[Message]) -> BatchResult:
            return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})

        return handler

    entry = sqs_handler(setup=setup, runtime=runtime)
    for _ in range(3):
        entry({"Records": [sqs_record(1)]}, Context())
    assert built == [1]


def test_deadline_reports_unfinished_messages_not_the_whole_batch(
    runtime: LambdaRuntime,
) -> None:
    import anyio

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        if event["n"] == 2:
            await anyio.sleep(30)

    entry = sqs_handler(batch_handler(handle), backoff=None, dead_letter=False,
                        runtime=runtime)
    # 1.3 s left: the adapter keeps a 1 s margin, so it stops after about 0.3 s.
    answer = entry({"Records": [sqs_record(1), sqs_record(2), sqs_record(3)]},
                   Context(remaining_ms=1_300))
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m2"}]}


def test_kinesis_record_becomes_a_message_and_binary_is_base64() -> None:
    text = message_from_kinesis_record(kinesis_record(7, b'{"a":1}'))
    assert (text.id, text.sequence, text.group_id, text.source_name) == (
        "7", "7", "dev-1", "shardId-000000000001")
    assert text.body == '{"a":1}'
    binary = message_from_kinesis_record(kinesis_record(8, b"\xff\xfe"))
    assert binary.attributes["content-transfer-encoding"] == "base64"
    assert base64.b64decode(binary.body) == b"\xff\xfe"


def test_kinesis_reports_only_the_lowest_failed_sequence(runtime: LambdaRuntime) -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        if event["n"] in (3, 5):
            raise RetryableError("later")

    entry = kinesis_handler(batch_handler(handle), runtime=runtime)
    records = [kinesis_record(100 + n, json.dumps({"n": n}).encode(), key=f"k{n}")
               for n in range(1, 7)]
    assert entry({"Records": records}, Context()) == {
        "batchItemFailures": [{"itemIdentifier": "103"}]}


def test_kinesis_without_failure_queue_reports_dead_letters(runtime: LambdaRuntime) -> None:
    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        raise DeadLetter("bad reading")

    entry = kinesis_handler(batch_handler(handle), runtime=runtime)
    records = [kinesis_record(10, b'{"n":1}'), kinesis_record(11, b"not json")]
    assert entry({"Records": records}, Context()) == {
        "batchItemFailures": [{"itemIdentifier": "10"}]}


def test_dynamodb_stream_record_and_failures(runtime: LambdaRuntime) -> None:
    def record(seq: str, pk: str) -> dict[str, Any]:
        return {"eventID": "e", "eventName": "INSERT", "eventSource": "aws:dynamodb",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:1:table/t/stream/2024",
                "dynamodb": {"Keys": {"pk": {"S": pk}}, "SequenceNumber": seq,
                             "NewImage": {"pk": {"S": pk}},
                             "ApproximateCreationDateTime": 1700000000}}

    m = message_from_dynamodb_record(record("500", "o-1"))
    assert (m.id, m.group_id, m.attributes["eventName"]) == ("500", "o-1", "INSERT")
    assert json.loads(m.body)["dynamodb"]["NewImage"] == {"pk": {"S": "o-1"}}

    async def handler(messages: Sequence[Message]) -> BatchResult:
        return BatchResult({messages[0].id: Outcome.SUCCEEDED, messages[1].id: Outcome.RETRY})

    entry = dynamodb_stream_handler(handler, runtime=runtime)
    answer = entry({"Records": [record("500", "a"), record("600", "b")]}, Context())
    assert answer == {"batchItemFailures": [{"itemIdentifier": "600"}]}


def test_eventbridge_success_returns_and_failure_raises(runtime: LambdaRuntime) -> None:
    seen: list[str] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        if event["detail"].get("fail"):
            raise RetryableError("downstream down")
        seen.append(event["detail-type"])

    entry = eventbridge_handler(batch_handler(handle), runtime=runtime)
    event = {"id": "e-1", "source": "fleetline.orders", "detail-type": "OrderPlaced",
             "detail": {}}
    assert entry(event, Context()) is None
    assert seen == ["OrderPlaced"]
    with pytest.raises(InvocationFailed) as info:
        entry({**event, "id": "e-2", "detail": {"fail": True}}, Context())
    assert info.value.outcome is Outcome.RETRY
    assert "downstream down" in str(info.value)


class PlaceOrder(BaseModel):
    sku: str
    quantity: int


def http_event(route_key: str, body: str | None = None, **extra: Any) -> dict[str, Any]:
    method, _, path = route_key.partition(" ")
    return {"version": "2.0", "routeKey": route_key, "rawPath": path,
            "headers": {"Content-Type": "application/json"}, "body": body,
            "isBase64Encoded": False,
            "requestContext": {"http": {"method": method, "path": path}}, **extra}


@pytest.fixture
def api(runtime: LambdaRuntime) -> Any:
    async def place(request: HttpRequest) -> HttpResponse:
        order = request.json(PlaceOrder)
        return HttpResponse(201, {"sku": order.sku, "quantity": order.quantity})

    async def get(request: HttpRequest) -> Any:
        if request.path_parameters["id"] == "missing":
            raise HttpError(404, "no such order", field="id")
        return {"id": request.path_parameters["id"]}

    async def boom(request: HttpRequest) -> Any:
        raise RuntimeError("secret detail")

    return http_api_handler({"POST /orders": place, "GET /orders/{id}": get,
                             "GET /boom": boom}, max_body_bytes=100, runtime=runtime)


def test_http_routes_and_answers(api: Any) -> None:
    created = api(http_event("POST /orders", '{"sku":"a","quantity":2}'), Context())
    assert created["statusCode"] == 201
    assert json.loads(created["body"]) == {"sku": "a", "quantity": 2}
    got = api(http_event("GET /orders/{id}", pathParameters={"id": "o-1"}), Context())
    assert (got["statusCode"], json.loads(got["body"])) == (200, {"id": "o-1"})
    missing = api(http_event("GET /orders/{id}", pathParameters={"id": "missing"}), Context())
    assert (missing["statusCode"], json.loads(missing["body"])["field"]) == (404, "id")
    assert api(http_event("GET /nothing"), Context())["statusCode"] == 404


def test_http_validation_names_the_field(api: Any) -> None:
    answer = api(http_event("POST /orders", '{"sku":"a","quantity":"many"}'), Context())
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 400
    assert body["field"] == "quantity"
    assert [e["field"] for e in body["errors"]] == ["quantity"]
    not_json = api(http_event("POST /orders", "{oops"), Context())
    assert (not_json["statusCode"], json.loads(not_json["body"])["field"]) == (400, "body")


def test_http_oversized_body_is_413_and_errors_hide_details(api: Any) -> None:
    big = api(http_event("POST /orders", json.dumps({"sku": "x" * 200, "quantity": 1})),
              Context())
    assert big["statusCode"] == 413
    assert json.loads(big["body"])["limit"] == 100
    boom = api(http_event("GET /boom"), Context())
    assert boom["statusCode"] == 500
    assert "secret" not in boom["body"]
