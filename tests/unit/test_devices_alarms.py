"""The alarm publisher without I/O: entries, the failure decisions, and the batch handler
over the in-memory topic (services/devices/alarms.py); plus its wiring in the template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from services.devices.alarms import (
    ALARM_TYPES,
    AlarmPublisher,
    EntryFailure,
    MemoryAlarmTopic,
    NotPublished,
    alarm_entry,
    alarm_publisher_handler,
    decode_alarm,
    settle_failures,
)
from services.devices.events import (
    DeviceConnected,
    DeviceView,
    Severity,
    Status,
    ThresholdBreached,
    ThresholdCleared,
)
from shared.consumers import Message, Outcome, SourceKind
from shared.errors import InvalidMessageError
from shared.events import Envelope

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


def view(device: str = "d-1", tenant: str = "t-001") -> DeviceView:
    return DeviceView(device_id=device, tenant_id=tenant, zone="eu", status=Status.ONLINE,
                      seq=7, last_seen=1_700_000_000.0, readings={"temperature": 91.0},
                      alarms={"temperature": Severity.CRITICAL})


def breached(device: str = "d-1", *, severity: Severity = Severity.CRITICAL,
             tenant: str = "t-001") -> Envelope:
    data = ThresholdBreached(device=view(device, tenant), metric="temperature", value=91.0,
                             limit=80.0, bound="max", severity=severity)
    return Envelope.new(data, aggregate_id=device, sequence=3, tenant_id=tenant)


def as_message(envelope: Envelope, message_id: str | None = None) -> Message:
    """As AlarmPublishQueue delivers it: the EventBridge event the rule sent."""
    event = {"version": "0", "id": "eb-1", "detail-type": envelope.type,
             "source": envelope.source, "detail": json.loads(envelope.to_json())}
    return Message(id=message_id or f"m-{envelope.id}", body=json.dumps(event),
                   source=SourceKind.SQS, source_name="https://sqs/q/alarm-publish")


def attributes(entry: dict[str, Any]) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in entry["MessageAttributes"].items()}


# --------------------------------------------------------------------------------- entries
def test_entry_is_the_envelope_with_tenant_severity_type_and_event_id() -> None:
    envelope = breached(severity=Severity.WARNING)
    entry = alarm_entry("0", decode_alarm(as_message(envelope)))
    assert entry["Id"] == "0"
    message = json.loads(entry["Message"])
    assert message["id"] == envelope.id
    assert message["type"] == "ThresholdBreached"
    assert message["data"]["metric"] == "temperature"
    assert {k: v for k, v in attributes(entry).items() if k not in {"traceparent",
                                                                    "tracestate"}} == {
        "tenant": "t-001", "severity": "warning", "type": "ThresholdBreached",
        "event_id": envelope.id}
    assert len(entry["MessageAttributes"]) <= 10  # the SNS limit


def test_only_alarms_with_a_tenant_decode() -> None:
    cleared = Envelope.new(ThresholdCleared(device=view(), metric="temperature", value=50.0,
                                            severity=Severity.CRITICAL),
                           aggregate_id="d-1", sequence=4)
    assert decode_alarm(as_message(cleared)).type == "ThresholdCleared"
    connected = Envelope.new(DeviceConnected(device=view()), aggregate_id="d-1", sequence=1)
    with pytest.raises(InvalidMessageError, match="type"):
        decode_alarm(as_message(connected))
    with pytest.raises(InvalidMessageError, match="tenant_id"):
        decode_alarm(as_message(breached(tenant="")))
    with pytest.raises(InvalidMessageError):
        decode_alarm(Message(id="x", body="{not json", source=SourceKind.SQS, source_name="q"))
    offloaded = json.loads(breached().to_json())
    offloaded.pop("data")
    offloaded["data_ref"] = {"uri": "s3://bucket/key", "sha256": "0" * 64, "size": 300_000}
    with pytest.raises(InvalidMessageError, match="data_ref"):
        decode_alarm(Message(id="x", body=json.dumps(offloaded), source=SourceKind.SQS,
                             source_name="q"))


# --------------------------------------------------------------------------------- decisions
def test_sender_faults_dead_letter_and_the_rest_go_again_then_back_to_the_queue() -> None:
    failures = [EntryFailure(id="0", code="InvalidParameter", message="too long",
                             sender_fault=True),
                EntryFailure(id="1", code="InternalError")]
    again, settled = settle_failures(failures, last_attempt=False)
    assert again == ["1"]
    assert settled == {"0": NotPublished(Outcome.DEAD_LETTER,
                                         "InvalidParameter: SNS refused the entry: too long")}
    again, settled = settle_failures(failures, last_attempt=True)
    assert again == []
    assert settled["1"] == NotPublished(Outcome.RETRY, "InternalError: SNS refused it")


def test_publisher_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="attempts"):
        AlarmPublisher(MemoryAlarmTopic(), attempts=0)
    with pytest.raises(ValueError, match="retry_delay"):
        AlarmPublisher(MemoryAlarmTopic(), retry_delay=-1)


# --------------------------------------------------------------------------------- handler
async def run(topic: MemoryAlarmTopic, messages: list[Message], attempts: int = 3
              ) -> tuple[dict[str, Outcome], dict[str, str]]:
    handler = alarm_publisher_handler(AlarmPublisher(topic, attempts=attempts, retry_delay=0))
    result = await handler(messages)
    return dict(result.outcomes), dict(result.reasons)


async def test_a_batch_of_ten_is_one_publish_batch() -> None:
    topic = MemoryAlarmTopic()
    envelopes = [breached(f"d-{i}") for i in range(10)]
    outcomes, _ = await run(topic, [as_message(e) for e in envelopes])
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}
    assert topic.requests == 1
    assert sorted(attributes(e)["event_id"] for e in topic.published) == sorted(
        e.id for e in envelopes)


async def test_more_than_ten_go_out_in_batches_of_ten() -> None:
    topic = MemoryAlarmTopic()
    publisher = AlarmPublisher(topic, retry_delay=0)
    entries = [alarm_entry(str(i), decode_alarm(as_message(breached(f"d-{i}"))))
               for i in range(25)]
    assert await publisher.publish(entries) == {}
    assert topic.requests == 3
    assert len(topic.published) == 25


async def test_a_failed_entry_is_sent_again_in_the_same_invocation() -> None:
    topic = MemoryAlarmTopic()
    flaky, steady = breached("d-1"), breached("d-2")
    topic.refusals[flaky.id] = [EntryFailure(id="", code="InternalError")]
    outcomes, _ = await run(topic, [as_message(flaky), as_message(steady)])
    assert outcomes == {f"m-{flaky.id}": Outcome.SUCCEEDED, f"m-{steady.id}": Outcome.SUCCEEDED}
    assert topic.requests == 2
    assert [attributes(e)["event_id"] for e in topic.published] == [steady.id, flaky.id]


async def test_an_entry_failing_every_attempt_goes_back_to_the_queue() -> None:
    topic = MemoryAlarmTopic()
    stuck, fine = breached("d-1"), breached("d-2")
    topic.refusals[stuck.id] = [EntryFailure(id="", code="InternalError")] * 3
    outcomes, reasons = await run(topic, [as_message(stuck), as_message(fine)], attempts=3)
    assert outcomes == {f"m-{stuck.id}": Outcome.RETRY, f"m-{fine.id}": Outcome.SUCCEEDED}
    assert reasons[f"m-{stuck.id}"] == "InternalError: SNS refused it"
    assert topic.requests == 3


async def test_an_entry_sns_refuses_as_the_senders_fault_is_dead_lettered_at_once() -> None:
    topic = MemoryAlarmTopic()
    bad = breached("d-1")
    topic.refusals[bad.id] = [EntryFailure(id="", code="InvalidParameter",
                                           message="Message too long", sender_fault=True)]
    outcomes, reasons = await run(topic, [as_message(bad)])
    assert outcomes == {f"m-{bad.id}": Outcome.DEAD_LETTER}
    assert "Message too long" in reasons[f"m-{bad.id}"]
    assert topic.requests == 1


async def test_a_request_failing_as_a_whole_is_retried_then_returned_to_the_queue() -> None:
    topic = MemoryAlarmTopic(unavailable=1)
    alarm = breached()
    outcomes, _ = await run(topic, [as_message(alarm)])
    assert outcomes == {f"m-{alarm.id}": Outcome.SUCCEEDED}
    assert topic.requests == 2

    topic = MemoryAlarmTopic(unavailable=5)
    outcomes, reasons = await run(topic, [as_message(alarm)], attempts=2)
    assert outcomes == {f"m-{alarm.id}": Outcome.RETRY}
    assert "unavailable" in reasons[f"m-{alarm.id}"]
    assert topic.published == []


async def test_what_is_not_an_alarm_is_dead_lettered_and_the_rest_still_published() -> None:
    topic = MemoryAlarmTopic()
    alarm = breached()
    connected = Envelope.new(DeviceConnected(device=view()), aggregate_id="d-1", sequence=1)
    outcomes, reasons = await run(topic, [as_message(connected), as_message(alarm)])
    assert outcomes == {f"m-{connected.id}": Outcome.DEAD_LETTER,
                        f"m-{alarm.id}": Outcome.SUCCEEDED}
    # the error class leads, as in every consumer's DLQ reason
    assert reasons[f"m-{connected.id}"].startswith("InvalidMessageError: type")
    assert len(topic.published) == 1


# --------------------------------------------------------------------------------- template
@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode(str(TEMPLATE))
    assert not matches
    assert decoded is not None
    return dict(decoded)


def test_the_rule_routes_exactly_the_alarm_types_to_the_publishers_queue(
    template: dict[str, Any],
) -> None:
    rule = template["Resources"]["AlarmPublishRule"]["Properties"]
    assert rule["EventPattern"] == {"source": ["fleetline.devices"],
                                    "detail-type": sorted(ALARM_TYPES)}
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["AlarmPublishQueue", "Arn"]}
    mapping = template["Resources"]["AlarmPublisherEventSource"]["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["AlarmPublishQueue", "Arn"]}
    assert mapping["BatchSize"] == 10  # one PublishBatch per invocation
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_only_the_alarm_publishers_may_publish_to_the_alarms_topic(
    template: dict[str, Any],
) -> None:
    publishers = set()
    for lid, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"]
                if "sns:Publish" in (actions if isinstance(actions, list) else [actions]):
                    publishers.add(lid)
    assert publishers == {"AlarmPublisherFunctionRole", "IotIngestFunctionRole"}
    telemetry = template["Resources"]["TelemetryWorkerTaskDefinition"]["Properties"]
    env = {e["Name"] for e in telemetry["ContainerDefinitions"][0]["Environment"]}
    assert "FLEETLINE_ALARMS_TOPIC" not in env
