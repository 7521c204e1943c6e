"""Envelope, registry and decoding from every transport: pure, no I/O."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, ConfigDict

from shared import tracing
from shared.errors import ConfigurationError, InvalidMessageError, is_retryable
from shared.events import (
    MAX_PUT_EVENTS_ENTRY_BYTES,
    ClaimCheckNotConfiguredError,
    DataRef,
    Envelope,
    EventRegistry,
    EventTooLargeError,
    InvalidEventDataError,
    MalformedMessageError,
    UnknownEventTypeError,
    event_type,
    load_registered_events,
    put_events_entry_size,
    to_put_events_entry,
)
from shared.events._ids import event_id_time_ms, new_event_id
from shared.events._spec import check_event_type_name, spec_of

REG = EventRegistry()


@event_type("ParcelShipped", source="fleetline.tests", version=1, registry=REG)
class ParcelShippedV1(BaseModel):
    parcel_id: str
    weight_grams: int


@event_type("ParcelShipped", source="fleetline.tests", version=2, registry=REG)
class ParcelShippedV2(BaseModel):
    parcel_id: str
    weight_grams: int
    carrier: str = "unknown"  # new in v2, optional: v2 readers of old-shaped data get this


@event_type("PaymentSent", source="fleetline.tests", registry=REG)
class PaymentSent(BaseModel):
    amount_cents: int


def _envelope(**overrides: object) -> Envelope:
    env = Envelope.new(
        ParcelShippedV1(parcel_id="p-1", weight_grams=1200), aggregate_id="p-1", sequence=3
    )
    return env.model_copy(update=overrides) if overrides else env


# ------------------------------------------------------------------------- ids and names


def test_event_ids_are_uuid7_strictly_increasing_and_carry_the_time() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    ids = [new_event_id() for _ in range(5000)]
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert before <= event_id_time_ms(ids[0]) <= event_id_time_ms(ids[-1]) <= after + 2
    with pytest.raises(ValueError, match="UUIDv7"):
        event_id_time_ms(str(uuid.uuid4()))


@pytest.mark.parametrize("name", ["OrderPlaced", "PaymentSent", "FirmwareRolloutHeld", "SMSSent"])
def test_past_tense_pascal_case_names_are_accepted(name: str) -> None:
    assert check_event_type_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [("PlaceOrder", "past tense"), ("orderPlaced", "PascalCase"), ("Order_Placed", "PascalCase")],
)
def test_other_names_are_refused_with_the_rule(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_event_type_name(name)


def test_registration_refuses_bad_declarations() -> None:
    reg = EventRegistry()

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    with pytest.raises(ValueError, match="forbids extra"):
        reg.register(Strict, type="ThingHappened", source="fleetline.tests")
    with pytest.raises(ValueError, match="source"):
        reg.register(ParcelShippedV1, type="ParcelShipped", source="Fleetline")
    with pytest.raises(ValueError, match="version"):
        reg.register(ParcelShippedV1, type="ParcelShipped", source="fleetline.tests", version=0)

    class Other(BaseModel):
        parcel_id: str

    reg.register(ParcelShippedV1, type="ParcelShipped", source="fleetline.tests")
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Other, type="ParcelShipped", source="fleetline.tests")
    # the same model again is a no-op
    reg.register(ParcelShippedV1, type="ParcelShipped", source="fleetline.tests")
    assert reg.versions("ParcelShipped") == (1,)
    assert REG.versions("ParcelShipped") == (1, 2)


# ------------------------------------------------------------------------- envelope


def test_new_envelope_fills_metadata_from_the_declaration() -> None:
    env = _envelope()
    assert (env.type, env.source, env.version) == ("ParcelShipped", "fleetline.tests", 1)
    assert env.correlation_id == env.id  # a new chain starts at this event
    assert env.causation_id is None
    assert env.time.tzinfo is UTC
    assert env.data == {"parcel_id": "p-1", "weight_grams": 1200}
    assert env.trace == {}  # no span is current
    assert spec_of(ParcelShippedV1).schema_name == "ParcelShipped.v1"


def test_caused_envelope_inherits_correlation_tenant_and_names_its_cause() -> None:
    parent = Envelope.new(
        PaymentSent(amount_cents=5), aggregate_id="a", sequence=0, tenant_id="t-9",
        correlation_id="req-1",
    )
    child = Envelope.new(
        ParcelShippedV1(parcel_id="p", weight_grams=1), aggregate_id="p", sequence=0,
        causation=parent,
    )
    assert child.correlation_id == "req-1"
    assert child.causation_id == parent.id
    assert child.tenant_id == "t-9"
    assert child.id > parent.id


def test_new_envelope_captures_the_current_trace_context() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test-events", exporter=exporter)
    with tracing.tracer("test").start_as_current_span("commit") as span:
        env = _envelope()
    ctx = span.get_span_context()
    assert env.trace["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert env.trace["X-Amzn-Trace-Id"].startswith(
        f"Root={tracing.format_xray_trace_id(ctx.trace_id)};Parent={ctx.span_id:016x}"
    )


def test_envelope_is_frozen_ignores_unknown_fields_and_normalises_time_to_utc() -> None:
    env = _envelope()
    with pytest.raises(pydantic.ValidationError):
        env.sequence = 4  # type: ignore[misc]
    raw = json.loads(env.to_json())
    raw["added_by_a_newer_producer"] = {"x": 1}
    raw["time"] = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))).isoformat()
    back = Envelope.model_validate(raw)
    assert back.time == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert not hasattr(back, "added_by_a_newer_producer")
    assert json.loads(back.to_json())["time"] == "2026-01-01T10:00:00.000000Z"


def test_missing_correlation_id_defaults_to_the_event_id() -> None:
    raw = json.loads(_envelope().to_json())
    del raw["correlation_id"]
    assert Envelope.model_validate(raw).correlation_id == raw["id"]


def test_envelope_needs_data_or_data_ref() -> None:
    raw = json.loads(_envelope().to_json())
    del raw["data"]
    with pytest.raises(pydantic.ValidationError, match="data or data_ref"):
        Envelope.model_validate(raw)
    raw["data_ref"] = {"uri": "s3://b/k", "sha256": "0" * 64, "size": 3}
    env = Envelope.model_validate(raw)
    assert env.data_ref == DataRef(uri="s3://b/k", sha256="0" * 64, size=3)
    assert (env.data_ref.bucket, env.data_ref.key) == ("b", "k")


# ------------------------------------------------------------------------- decoding


def _transports(env: Envelope) -> dict[str, object]:
    body = env.to_json()
    eventbridge = {
        "version": "0", "id": "eb-1", "detail-type": env.type, "source": env.source,
        "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [],
        "detail": json.loads(body),
    }
    sns = {
        "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": body, "Timestamp": "2026-01-01T00:00:00Z",
    }
    return {
        "raw str": body,
        "raw bytes": body.encode(),
        "raw dict": json.loads(body),
        "eventbridge": json.dumps(eventbridge),
        "sns": json.dumps(sns),
        "sns of eventbridge": json.dumps({**sns, "Message": json.dumps(eventbridge)}),
        "lambda sqs record": {"eventSource": "aws:sqs", "messageId": "x", "body": json.dumps(sns)},
        "lambda sns record": {"EventSource": "aws:sns", "Sns": sns},
        "lambda kinesis record": {
            "eventSource": "aws:kinesis",
            "kinesis": {"partitionKey": "p-1", "data": base64.b64encode(body.encode()).decode()},
        },
        "dynamodb record (envelope attribute)": {
            "eventName": "INSERT",
            "dynamodb": {"NewImage": {"pk": {"S": "p-1"}, "envelope": {"S": body}}},
        },
        "dynamodb record (image is the envelope)": {
            "eventName": "INSERT",
            "dynamodb": {
                "NewImage": {
                    "id": {"S": env.id}, "type": {"S": env.type}, "source": {"S": env.source},
                    "version": {"N": "1"}, "time": {"S": env.time.isoformat()},
                    "correlation_id": {"S": env.correlation_id},
                    "aggregate_id": {"S": env.aggregate_id}, "sequence": {"N": "3"},
                    "trace": {"M": {}}, "causation_id": {"NULL": True},
                    "data": {"M": {"parcel_id": {"S": "p-1"}, "weight_grams": {"N": "1200"}}},
                }
            },
        },
    }


@pytest.mark.parametrize("transport", list(_transports(_envelope())))
def test_decode_finds_the_envelope_in_every_transport(transport: str) -> None:
    env = _envelope()
    event = REG.decode(_transports(env)[transport])  # type: ignore[arg-type]
    assert event.envelope == env
    assert event.data == ParcelShippedV1(parcel_id="p-1", weight_grams=1200)
    assert event.data_as(ParcelShippedV1).weight_grams == 1200
    assert (event.id, event.type, event.version) == (env.id, "ParcelShipped", 1)


def test_v1_and_v2_coexist_and_missing_optional_fields_take_defaults() -> None:
    v1 = _envelope()
    v2 = _envelope(version=2, data={"parcel_id": "p-1", "weight_grams": 5, "extra": "ignored"})
    assert REG.decode(v1.to_json()).data == ParcelShippedV1(parcel_id="p-1", weight_grams=1200)
    decoded = REG.decode_as(v2.to_json(), ParcelShippedV2)
    assert decoded.data == ParcelShippedV2(parcel_id="p-1", weight_grams=5, carrier="unknown")
    with pytest.raises(TypeError, match="ParcelShippedV2"):
        decoded.data_as(ParcelShippedV1)  # type: ignore[arg-type]
    with pytest.raises(UnknownEventTypeError):
        REG.decode_as(v1.to_json(), ParcelShippedV2)


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ("{not json", MalformedMessageError, "body"),
        (b"\xff\xfe", MalformedMessageError, "body"),
        ("[1, 2]", MalformedMessageError, "body"),
        ('{"hello": "world"}', MalformedMessageError, "id"),
        (_envelope(type="ParcelLost").to_json(), UnknownEventTypeError, "type"),
        (_envelope(version=9).to_json(), UnknownEventTypeError, "type"),
        (_envelope(data={"parcel_id": "p"}).to_json(), InvalidEventDataError, "data.weight_grams"),
        (
            _envelope(data={"parcel_id": "p", "weight_grams": "heavy"}).to_json(),
            InvalidEventDataError,
            "data.weight_grams",
        ),
        (
            json.dumps({**json.loads(_envelope().to_json()), "sequence": -1}),
            InvalidEventDataError,
            "sequence",
        ),
        (
            json.dumps({**json.loads(_envelope().to_json()), "type": "ShipParcel"}),
            InvalidEventDataError,
            "type",
        ),
        ('{"detail-type": "X", "detail": "{oops"}', MalformedMessageError, "body"),
        ({"kinesis": {"data": "***"}}, MalformedMessageError, "kinesis.data"),
        ({"dynamodb": {"OldImage": {}}}, MalformedMessageError, "dynamodb.NewImage"),
    ],
)
def test_bad_messages_raise_invalid_message_naming_the_field(
    body: object, error: type[InvalidMessageError], field: str
) -> None:
    with pytest.raises(error) as caught:
        REG.decode(body)  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidMessageError)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert not is_retryable(caught.value)


def test_claim_checked_envelope_needs_a_store_to_decode() -> None:
    raw = json.loads(_envelope().to_json())
    del raw["data"]
    raw["data_ref"] = {"uri": "s3://b/k", "sha256": "a" * 64, "size": 10}
    with pytest.raises(ClaimCheckNotConfiguredError, match="decode_async"):
        REG.decode(json.dumps(raw))


# ------------------------------------------------------------------------- EventBridge


def test_put_events_entry_carries_the_envelope_and_the_xray_header() -> None:
    env = _envelope(trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                           "X-Amzn-Trace-Id": "Root=1-11111111-111111111111111111111111;"
                                              "Parent=2222222222222222;Sampled=1"})
    entry = to_put_events_entry(env, "fleetline-orders")
    assert entry["Source"] == "fleetline.tests"
    assert entry["DetailType"] == "ParcelShipped"
    assert entry["EventBusName"] == "fleetline-orders"
    assert entry["TraceHeader"].startswith("Root=1-11111111-")
    assert Envelope.model_validate_json(entry["Detail"]) == env
    assert "TraceHeader" not in to_put_events_entry(_envelope(), "bus")


def test_put_events_entry_size_follows_the_eventbridge_rule_and_refuses_oversize() -> None:
    entry = {"Source": "ab", "DetailType": "Cé", "Detail": "{}", "Resources": ["r1"], "Time": 1}
    assert put_events_entry_size(entry) == 2 + 3 + 2 + 2 + 14
    near = MAX_PUT_EVENTS_ENTRY_BYTES - 1000
    fits = _envelope(data={"parcel_id": "x" * (near - 400), "weight_grams": 1})
    assert put_events_entry_size(to_put_events_entry(fits, "b")) <= MAX_PUT_EVENTS_ENTRY_BYTES
    too_big = _envelope(data={"parcel_id": "x" * MAX_PUT_EVENTS_ENTRY_BYTES, "weight_grams": 1})
    with pytest.raises(EventTooLargeError) as caught:
        to_put_events_entry(too_big, "b")
    assert caught.value.size > caught.value.limit == MAX_PUT_EVENTS_ENTRY_BYTES
    assert not is_retryable(caught.value)


# ------------------------------------------------------------------------- discovery


def test_load_registered_events_imports_entry_point_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_service_events.py").write_text(
        "from pydantic import BaseModel\n"
        "from shared.events import EventRegistry, event_type\n"
        "LOCAL = EventRegistry()\n"
        "@event_type('WidgetBuilt', source='fleetline.fake', registry=LOCAL)\n"
        "class WidgetBuilt(BaseModel):\n"
        "    widget_id: str\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "fleetline.events"
    found = [importlib.metadata.EntryPoint("fake", "fake_service_events", group)]
    assert load_registered_events(entry_points=lambda g: found if g == group else []) == ["fake"]
    module = sys.modules["fake_service_events"]
    assert ("WidgetBuilt", 1) in module.LOCAL
    broken = [importlib.metadata.EntryPoint("broken", "no_such_module_xyz", group)]
    with pytest.raises(ConfigurationError, match=r"'broken'.*failed to import"):
        load_registered_events(entry_points=lambda g: broken)
