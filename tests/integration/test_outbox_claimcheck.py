"""Events over EventBridge's 256 KB leave the outbox claim-checked: the relay (and the Pipe's
enrichment) store the data in S3 and publish the envelope with `data_ref` under the same id;
consumers decode it back transparently."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from shared.aws import AwsClients
from shared.consumers._message import Outcome
from shared.errors import AwsRequestError
from shared.events import ClaimCheck, EventRegistry, event_type
from shared.outbox import ItemRef, PublisherConfig, Relay, UnitOfWork, added_events
from shared.outbox.pipe import offload_large

from ._outbox_support import bus_to_queue, create_table, drain, read_stream

pytestmark = pytest.mark.emulator

REG = EventRegistry()
BUCKET = "outbox-claims"
BLOB = "".join(chr(0x41 + (i * 7) % 26) for i in range(300_000))  # ~300 KB


@event_type("ManifestUploaded", source="fleetline.bigtest", registry=REG)
class ManifestUploaded(BaseModel):
    manifest_id: str
    blob: str


async def _commit_big(aws: AwsClients) -> tuple[str, str]:
    stream = await create_table(aws, "manifests")
    assert stream is not None
    uow = UnitOfWork(aws)
    manifest = await uow.load(ItemRef(table="manifests", key={"pk": "m-1"}))
    uow.save(manifest, {"status": "uploaded"},
             events=[ManifestUploaded(manifest_id="m-1", blob=BLOB)])
    (committed,) = await uow.commit()
    return stream, committed.id


async def test_relay_claim_checks_a_300kb_event_and_consumers_see_the_data(
    aws: AwsClients,
) -> None:
    await (await aws.client("s3")).create_bucket(Bucket=BUCKET)
    url = await bus_to_queue(aws, "big-bus", "big-sink", source_prefix="fleetline.bigtest")
    stream, event_id = await _commit_big(aws)

    relay = Relay(aws, PublisherConfig(bus_name="big-bus", claim_check_bucket=BUCKET))
    result = await relay(await read_stream(aws, stream))

    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}, result.reasons
    (body,) = await drain(aws, url, expect=1)
    assert body["detail"]["id"] == event_id  # same id: inboxes still drop republished copies
    assert "data" not in body["detail"] or body["detail"]["data"] is None
    assert body["detail"]["data_ref"]["uri"].startswith(f"s3://{BUCKET}/claim-check/")
    event = await REG.decode_async(json.dumps(body), claim_check=ClaimCheck(aws, bucket=BUCKET))
    assert event.id == event_id
    assert event.data == ManifestUploaded(manifest_id="m-1", blob=BLOB)


async def test_without_a_bucket_the_relay_refuses_for_good(aws: AwsClients) -> None:
    stream, _ = await _commit_big(aws)
    relay = Relay(aws, PublisherConfig(bus_name="nobody"))
    result = await relay(await read_stream(aws, stream))
    (outcome,) = result.outcomes.values()
    assert outcome is Outcome.DEAD_LETTER
    assert "no claim-check bucket" in next(iter(result.reasons.values()))


async def test_pipe_enrichment_offloads_under_the_same_id(aws: AwsClients) -> None:
    await (await aws.client("s3")).create_bucket(Bucket=BUCKET)
    stream, event_id = await _commit_big(aws)
    records = [json.loads(m.body) for m in await read_stream(aws, stream)]
    envelopes = [e for r in records for e in added_events(r)]
    claim_check = ClaimCheck(aws, bucket=BUCKET)

    (sent,) = await offload_large(envelopes, claim_check)

    assert sent["id"] == event_id
    assert sent.get("data") is None
    assert sent["data_ref"]["size"] > 300_000
    assert len(json.dumps(sent)) < 4096
    event = await REG.decode_async(json.dumps(sent), claim_check=claim_check)
    assert event.data == ManifestUploaded(manifest_id="m-1", blob=BLOB)


async def test_unit_of_work_offloads_payloads_too_big_for_the_item(aws: AwsClients) -> None:
    await (await aws.client("s3")).create_bucket(Bucket=BUCKET)
    url = await bus_to_queue(aws, "big-bus", "big-sink", source_prefix="fleetline.bigtest")
    stream = await create_table(aws, "manifests")
    assert stream is not None
    huge = BLOB + BLOB[:150_000]  # ~450 KB: more than a DynamoDB item holds
    ref = ItemRef(table="manifests", key={"pk": "m-2"})
    refused = UnitOfWork(aws)
    refused.save(await refused.load(ref), {"status": "x"},
                 events=[ManifestUploaded(manifest_id="m-2", blob=huge)])
    with pytest.raises(AwsRequestError):
        await refused.commit()

    claim_check = ClaimCheck(aws, bucket=BUCKET)
    uow = UnitOfWork(aws, claim_check=claim_check)
    uow.save(await uow.load(ref), {"status": "uploaded"},
             events=[ManifestUploaded(manifest_id="m-2", blob=huge)])
    (committed,) = await uow.commit()
    assert committed.data is None
    assert committed.data_ref is not None

    relay = Relay(aws, PublisherConfig(bus_name="big-bus"))  # no bucket needed any more
    result = await relay(await read_stream(aws, stream))
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}, result.reasons
    (body,) = await drain(aws, url, expect=1)
    event = await REG.decode_async(json.dumps(body), claim_check=claim_check)
    assert event.id == committed.id
    assert event.data == ManifestUploaded(manifest_id="m-2", blob=huge)
