"""The readings lake on the emulator, as the template declares it: the telemetry worker's
readings through the delivery stream (created from the template's own properties) land as
Parquet under readings/zone=Z/date=D/, and the monthly report reads them back with DuckDB,
reading only the month's partitions."""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq
import pytest

from services.devices._store import MemoryDeviceStore
from services.devices.domain import Telemetry
from services.devices.lake import LAKE_COLUMNS, FirehoseLake
from services.devices.report import combine, run_duckdb
from services.devices.telemetry import TelemetryConfig, TelemetryProcessor
from shared.aws import AwsClients
from shared.cloudformation import DEFAULT_TEMPLATE, load_template
from shared.consumers import Message, SourceKind
from shared.local import StackFacts, plan_gaps

pytestmark = [pytest.mark.emulator]

DEC_1 = 1764547200.0  # 2025-12-01T00:00:00Z
_counter = iter(range(10**9))


async def lake_stack(aws: AwsClients, stack: str) -> tuple[str, str]:
    """The template's lake resources on the emulator: its bucket (moto's CloudFormation
    would create it), then the Glue database and table and the delivery stream as
    `fleetline up` creates them (`plan_gaps`: the calls' parameters are the template's
    properties). Returns (bucket, delivery stream)."""
    s3 = await aws.client("s3")
    bucket = f"{stack}-lake-bucket"
    await s3.create_bucket(Bucket=bucket)
    facts = StackFacts(stack_name=stack, region=aws.region, account="123456789012",
                       physical={"LakeBucket": bucket, "ReadingsDeliveryRole": f"{stack}-role",
                                 "LakeLogGroup": f"/aws/kinesisfirehose/{stack}-readings",
                                 "LakeLogStream": "delivery"},
                       parameters={"ResidencyZone": "eu"})
    plan = plan_gaps(load_template(DEFAULT_TEMPLATE), facts)
    assert [r.logical_id for r in plan.api_resources] == [
        "LakeDatabase", "ReadingsTable", "ReadingsDeliveryStream"]
    for spec in plan.api_resources:
        client = await aws.client(spec.service)
        await getattr(client, spec.operation)(**spec.params)
    return bucket, f"{stack}-readings"


def message(record: Telemetry, arrival: float) -> Message:
    n = next(_counter)
    return Message(id=f"{n:012d}", body=record.to_json(), source=SourceKind.KINESIS,
                   source_name="shard-0", sequence=f"{n:012d}", approximate_arrival=arrival)


def reading(device: str, seq: int, ts: float, *, tenant: str = "t-001", temp: float = 20.0,
            firmware: str = "1.0") -> Telemetry:
    return Telemetry(device_id=device, tenant_id=tenant, zone="eu", seq=seq, ts=ts,
                     readings={"temperature": temp, "battery": 50.0}, firmware=firmware)


async def objects(aws: AwsClients, bucket: str) -> dict[str, bytes]:
    s3 = await aws.client("s3")
    out: dict[str, bytes] = {}
    for item in (await s3.list_objects_v2(Bucket=bucket)).get("Contents", []):
        body = await s3.get_object(Bucket=bucket, Key=item["Key"])
        out[item["Key"]] = await body["Body"].read()
    return out


async def test_readings_land_as_parquet_by_zone_and_date_and_the_report_reads_them(
        aws: AwsClients) -> None:
    bucket, stream = await lake_stack(aws, "lk")
    lake = FirehoseLake(aws, stream)
    worker = TelemetryProcessor(MemoryDeviceStore(), TelemetryConfig(zone="eu"), lake=lake)
    day = 86400.0
    batch = [message(reading("d-1", s, DEC_1 + 200 * s, temp=10.0 + s), DEC_1 + 200 * s)
             for s in range(1, 6)]  # 1 Dec, five readings 200 s apart
    batch += [message(reading("d-2", 1, DEC_1 + day + 60, tenant="t-002"), DEC_1 + day)]
    batch += [message(reading("d-1", 6, DEC_1 + day + 120, temp=30.0), DEC_1 + day)]
    batch += [message(reading("d-3", 1, DEC_1 - 3600), DEC_1)]  # 30 Nov: another month
    await worker(batch)
    await worker([batch[0], batch[2]])  # duplicates: dropped before the lake
    assert lake.requests == 1

    stored = await objects(aws, bucket)
    prefixes = sorted({key.rsplit("/", 1)[0] for key in stored})
    assert prefixes == ["readings/zone=eu/date=2025-11-30", "readings/zone=eu/date=2025-12-01",
                        "readings/zone=eu/date=2025-12-02"]
    assert all(key.endswith(".parquet") and "/lk-readings-" in key for key in stored)
    first = pq.read_table(io.BytesIO(next(v for k, v in stored.items() if "12-01" in k)))
    assert first.schema.names == [name for name, _ in LAKE_COLUMNS]
    rows: list[dict[str, Any]] = first.to_pylist()
    assert len(rows) == 10  # 5 readings x 2 metrics
    assert {(r["device_id"], r["seq"]) for r in rows} == {("d-1", s) for s in range(1, 6)}

    # the same rows again (a batch retried after the lake took it): no figure changes
    await lake.put([row for m in batch[:5] for row in _rows(m)])
    partial = await run_duckdb(aws, bucket=bucket, zone="eu", month="2025-12")
    report = {(f.tenant_id, f.day): f for f in combine([partial])}
    assert sorted(report) == [("t-001", "2025-12-01"), ("t-001", "2025-12-02"),
                              ("t-002", "2025-12-02")]
    dec1 = report[("t-001", "2025-12-01")]
    assert (dec1.events, dec1.devices, dec1.firmware) == (5, 1, "1.0")
    assert dec1.metrics["temperature"] == {"min": 11.0, "avg": 13.0, "max": 15.0,
                                           "readings": 5}
    assert dec1.uptime == pytest.approx(4 / 288)  # five readings in four 5-minute slots
    # only December's partitions of the zone were read: not November's object
    stored = await objects(aws, bucket)
    november = sum(len(v) for k, v in stored.items() if "2025-11-30" in k)
    total = sum(len(v) for k, v in stored.items())
    assert 0 < partial.bytes_scanned <= total - november
    assert partial.bytes_scanned == total - november
    assert partial.files == 3  # 1 December 1 + its retry, 1 December 2; November's left out
    assert (await run_duckdb(aws, bucket=bucket, zone="us", month="2025-12")).rows == ()


def _rows(m: Message) -> list[bytes]:
    from services.devices.domain import parse_record
    from services.devices.lake import reading_rows

    record = parse_record(m.body)
    assert isinstance(record, Telemetry)
    return reading_rows(record, arrival=m.approximate_arrival or 0.0)
