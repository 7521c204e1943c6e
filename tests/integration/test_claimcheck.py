"""Claim check on the emulator: a 300 KB payload goes to S3, the envelope rides the bus with
`data_ref`, and decoding on the consumer side hands the handler the full `data`."""

from __future__ import annotations

import json

import anyio
import pytest
from pydantic import BaseModel

from shared.aws import AwsClients
from shared.events import (
    MAX_PUT_EVENTS_ENTRY_BYTES,
    ClaimCheck,
    ClaimCheckIntegrityError,
    Envelope,
    EventRegistry,
    event_type,
    put_events_entry_size,
)

pytestmark = pytest.mark.emulator

REG = EventRegistry()
BUCKET = "fleetline-claim-check-test"


@event_type("TelemetryArchived", source="fleetline.tests", registry=REG)
class TelemetryArchived(BaseModel):
    device_id: str
    samples: list[float]
    blob: str


def _big_event() -> Envelope:
    data = TelemetryArchived(device_id="d-1", samples=[1.5, 2.5], blob="x" * 300_000)
    return Envelope.new(data, aggregate_id="d-1", sequence=7)


async def _queue_behind_bus(aws: AwsClients) -> str:
    events, sqs = await aws.client("events"), await aws.client("sqs")
    await events.create_event_bus(Name="claims")
    url = (await sqs.create_queue(QueueName="claims-target"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    await events.put_rule(
        Name="all-tests", EventBusName="claims",
        EventPattern=json.dumps({"source": ["fleetline.tests"]}),
    )
    await events.put_targets(
        Rule="all-tests", EventBusName="claims", Targets=[{"Id": "q", "Arn": arn}]
    )
    return str(url)


async def _receive_one(aws: AwsClients, url: str) -> str:
    sqs = await aws.client("sqs")
    with anyio.fail_after(10):
        while True:
            got = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
            if got.get("Messages"):
                return str(got["Messages"][0]["Body"])


async def test_large_payload_travels_by_reference_and_decodes_transparently(
    aws: AwsClients,
) -> None:
    await (await aws.client("s3")).create_bucket(Bucket=BUCKET)
    url = await _queue_behind_bus(aws)
    claim_check = ClaimCheck(aws, bucket=BUCKET)
    original = _big_event()

    entry = await claim_check.put_events_entry(original, "claims")

    assert put_events_entry_size(entry) < MAX_PUT_EVENTS_ENTRY_BYTES
    sent = Envelope.model_validate_json(entry["Detail"])
    assert sent.data is None
    assert sent.data_ref is not None
    assert sent.data_ref.uri.startswith(f"s3://{BUCKET}/claim-check/fleetline.tests/")
    assert sent.data_ref.size > 300_000
    result = await (await aws.client("events")).put_events(Entries=[entry])
    assert result["FailedEntryCount"] == 0

    body = await _receive_one(aws, url)  # an EventBridge event whose detail is the envelope
    event = await REG.decode_async(body, claim_check=claim_check)

    assert event.id == original.id
    assert event.data == TelemetryArchived.model_validate(original.data)
    assert len(event.data_as(TelemetryArchived).blob) == 300_000
    assert event.envelope.data_ref == sent.data_ref


async def test_small_payload_stays_inline(aws: AwsClients) -> None:
    claim_check = ClaimCheck(aws, bucket=BUCKET)  # the bucket need not even exist
    small = Envelope.new(
        TelemetryArchived(device_id="d", samples=[], blob="tiny"), aggregate_id="d", sequence=1
    )
    assert await claim_check.offload(small) is small
    assert json.loads((await claim_check.put_events_entry(small, "b"))["Detail"])["data"]


async def test_tampered_or_missing_payload_is_refused_naming_the_field(aws: AwsClients) -> None:
    s3 = await aws.client("s3")
    await s3.create_bucket(Bucket=BUCKET)
    claim_check = ClaimCheck(aws, bucket=BUCKET)
    stored = await claim_check.store(_big_event())
    assert stored.data_ref is not None
    ref = stored.data_ref

    same_size = json.dumps({"device_id": "d-2"}).encode().ljust(ref.size)
    await s3.put_object(Bucket=BUCKET, Key=ref.key, Body=same_size)
    with pytest.raises(ClaimCheckIntegrityError) as tampered:
        await REG.decode_async(stored.to_json(), claim_check=claim_check)
    assert tampered.value.field == "data_ref.sha256"

    await s3.delete_object(Bucket=BUCKET, Key=ref.key)
    with pytest.raises(ClaimCheckIntegrityError) as missing:
        await claim_check.fetch(ref)
    assert missing.value.field == "data_ref.uri"
