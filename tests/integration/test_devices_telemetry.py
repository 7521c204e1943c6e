"""The telemetry worker against the emulator: the runtime's Kinesis consumer with leases and
checkpoints, the outbox unit of work, real PutRecords from the simulator."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import anyio
import pytest

from services.devices._store import DynamoDeviceStore
from services.devices.domain import (
    DEFAULT_THRESHOLDS,
    DeviceState,
    InvalidTelemetry,
    Telemetry,
    apply_telemetry,
    parse_record,
)
from services.devices.simulator import FleetConfig, OutRecord, simulate
from services.devices.telemetry import TelemetryConfig, TelemetryProcessor, telemetry_lifespan
from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import KinesisConsumer, Message, SourceKind, StreamConsumerConfig
from tests.integration._devices_support import (
    create_device_resources,
    device_docs,
    drain_queue,
    outbox_events,
    wait_for,
)

pytestmark = pytest.mark.emulator


def consumer_for(aws: AwsClients, res: Any, processor: TelemetryProcessor) -> KinesisConsumer:
    return KinesisConsumer(aws, processor, stream=res.stream, config=StreamConsumerConfig(
        lease_table=res.lease_table, application="telemetry",
        failure_queue_url=res.failure_queue_url, lease_duration=3.0, idle_backoff=0.1,
        max_attempts=2, retry_backoff=0.05,
    ))


def expected_states(sent: list[OutRecord]) -> dict[str, dict[str, Any]]:
    """Ground truth: the valid local records of each device applied in seq order."""
    by_device: dict[str, dict[int, Telemetry]] = defaultdict(dict)
    for rec in sent:
        try:
            parsed = parse_record(rec.data)
        except InvalidTelemetry:
            continue
        if isinstance(parsed, Telemetry) and parsed.zone == "eu":
            by_device[parsed.device_id][parsed.seq] = parsed
    out = {}
    for device_id, records in by_device.items():
        first = next(iter(records.values()))
        state = DeviceState.new(first)
        for seq in sorted(records):
            apply_telemetry(state, records[seq], thresholds=DEFAULT_THRESHOLDS, arrival=0.0)
        out[device_id] = state.snapshot()
    return out


async def test_faulty_fleet_ends_in_order_and_bad_records_reach_failure_queue(
    aws: AwsClients,
) -> None:
    res = await create_device_resources(aws, prefix="faults")
    sent: list[OutRecord] = []
    fleet = FleetConfig(devices=60, tenants=3, eu_share=0.8, duplicates=0.1,
                        out_of_order=0.1, malformed=0.03, misrouted=0.03, seed=5)
    report = await simulate(aws, fleet, stream=res.stream, bus=None, rate=5_000, count=900,
                            batch_size=150, on_batch=sent.extend)
    assert report.by_fault.get("malformed", 0) > 0
    assert report.by_fault.get("misrouted", 0) > 0
    assert len(sent) == report.records

    store = DynamoDeviceStore(aws, res.devices_table)
    processor = TelemetryProcessor(store, TelemetryConfig(zone="eu"))
    consumer = consumer_for(aws, res, processor)
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        # every record read: received == sent (stats are in-process)
        await wait_for(lambda: _done(processor, report.records), within=30)
        consumer.stop()

    docs = await device_docs(aws, res.devices_table)
    truth = expected_states(sent)
    assert set(docs) == set(truth)
    for device_id, expected in truth.items():
        got = {k: docs[device_id][k] for k in expected if k not in ("status",)}
        want = {k: v for k, v in expected.items() if k != "status"}
        assert got == want, device_id
        assert docs[device_id]["status"] == "online"
    stats = processor.statistics()
    assert stats.duplicates + stats.stale >= report.by_fault.get("duplicate", 0)
    assert stats.device_writes < stats.applied  # coalesced: fewer writes than records

    failures = [json.loads(m["Body"]) for m in await drain_queue(aws, res.failure_queue_url)]
    reasons = [f["reason"] for f in failures]
    assert len(failures) == report.by_fault["malformed"] + report.by_fault["misrouted"]
    assert sum("malformed" in r for r in reasons) == report.by_fault["malformed"]
    assert sum("residency" in r for r in reasons) == report.by_fault["misrouted"]
    assert all(f["shard_id"] and f["sequence_number"] for f in failures)
    # foreign-zone devices were never written
    assert all(doc["zone"] == "eu" for doc in docs.values())


async def _done(processor: TelemetryProcessor, total: int) -> bool:
    return processor.statistics().records >= total


async def test_silent_device_reported_disconnected_once(aws: AwsClients) -> None:
    res = await create_device_resources(aws, prefix="silence", shards=1)
    store = DynamoDeviceStore(aws, res.devices_table)
    processor = TelemetryProcessor(store, TelemetryConfig(
        zone="eu", write_mode="items", silence_after=1.0, sweep_interval=0.2))
    consumer = consumer_for(aws, res, processor)
    kinesis = await aws.client("kinesis")

    def record(device: str, seq: int) -> dict[str, Any]:
        body = Telemetry(device_id=device, tenant_id="t-1", zone="eu", seq=seq, ts=float(seq),
                         readings={"temperature": 20.0}).to_json()
        return {"Data": body.encode(), "PartitionKey": device}

    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        tg.start_soon(processor.run_sweeper)
        await kinesis.put_records(StreamName=res.stream,
                                  Records=[record("quiet", 1), record("chatty", 1)])
        # chatty keeps talking; quiet goes silent
        for seq in range(2, 14):
            await kinesis.put_records(StreamName=res.stream, Records=[record("chatty", seq)])
            await anyio.sleep(0.25)
        docs = await device_docs(aws, res.devices_table)
        assert docs["quiet"]["status"] == "offline"
        assert docs["chatty"]["status"] == "online"
        consumer.stop()
        tg.cancel_scope.cancel()
    events = await outbox_events(aws, res.devices_stream_arn)
    disconnected = [e["aggregate_id"] for e in events if e["type"] == "DeviceDisconnected"]
    assert disconnected == ["quiet"]
    connected = sorted(e["aggregate_id"] for e in events if e["type"] == "DeviceConnected")
    assert connected == ["chatty", "quiet"]


async def test_device_silent_across_a_restart_is_reported_once_by_the_stored_sweep(
    aws: AwsClients,
) -> None:
    """`gone` was written ONLINE by a first worker and never reports again. Fresh workers
    (the restart; two at once, as after a deployment) never hold it: their stored sweeps
    find it in DevicesTable and exactly one DeviceDisconnected reaches the outbox."""
    res = await create_device_resources(aws, prefix="stored", shards=1)
    now = time.time()

    def message(device: str, arrival: float) -> Message:
        body = Telemetry(device_id=device, tenant_id="t-1", zone="eu", seq=1, ts=arrival,
                         readings={"temperature": 20.0}).to_json()
        return Message(id=device, body=body, source=SourceKind.KINESIS, source_name="shard-0",
                       sequence=device, approximate_arrival=arrival)

    config = TelemetryConfig(zone="eu", write_mode="items", silence_after=60.0,
                             sweep_interval=5.0)
    first = TelemetryProcessor(DynamoDeviceStore(aws, res.devices_table), config)
    await first([message("gone", now - 600), message("alive", now - 1)])
    docs = await device_docs(aws, res.devices_table)
    assert {docs["gone"]["status"], docs["alive"]["status"]} == {"online"}

    store = DynamoDeviceStore(aws, res.devices_table)
    pages = [page async for page in store.scan_online(page_size=1)]
    assert len(pages) == 2  # one device a request: the Scan pages
    assert sorted(d.state.device_id for page in pages for d in page) == ["alive", "gone"]

    restarted = [TelemetryProcessor(DynamoDeviceStore(aws, res.devices_table), config)
                 for _ in range(2)]
    reported: list[int] = []

    async def sweep(processor: TelemetryProcessor) -> None:
        reported.append(await processor.sweep_stored())

    async with anyio.create_task_group() as tg:
        for processor in restarted:
            tg.start_soon(sweep, processor)
    assert sum(reported) == 1
    assert await restarted[0].sweep_stored() == 0  # run again: nothing left to report

    docs = await device_docs(aws, res.devices_table)
    assert docs["gone"]["status"] == "offline"
    assert docs["alive"]["status"] == "online"
    assert [d.state.device_id async for page in store.scan_online() for d in page] == ["alive"]
    assert all(p.device_count == 0 for p in restarted)  # swept devices are not kept
    events = await outbox_events(aws, res.devices_stream_arn)
    disconnected = [e["aggregate_id"] for e in events if e["type"] == "DeviceDisconnected"]
    assert disconnected == ["gone"]


async def test_telemetry_lifespan_runs_the_stored_sweep(
    aws: AwsClients, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's lifespan starts the stored sweeper: `silence_after` after start it
    reports a stored ONLINE device that stopped reporting before the restart."""
    res = await create_device_resources(aws, prefix="lifespan", shards=1)
    store = DynamoDeviceStore(aws, res.devices_table)
    first = TelemetryProcessor(store, TelemetryConfig(zone="eu", write_mode="items"))
    body = Telemetry(device_id="gone", tenant_id="t-1", zone="eu", seq=1, ts=1.0,
                     readings={"temperature": 20.0}).to_json()
    await first([Message(id="1", body=body, source=SourceKind.KINESIS, source_name="shard-0",
                         sequence="1", approximate_arrival=time.time() - 600)])
    for name, value in {**res.environ(), "FLEETLINE_RESIDENCY_ZONE": "eu",
                        "FLEETLINE_SILENCE_AFTER": "0.5", "FLEETLINE_SWEEP_INTERVAL": "0.2",
                        "FLEETLINE_STORED_SWEEP_INTERVAL": "600"}.items():
        monkeypatch.setenv(name, value)

    async def gone_offline() -> bool:
        docs = await device_docs(aws, res.devices_table)
        return bool(docs["gone"]["status"] == "offline")

    async with telemetry_lifespan(aws, Resources.from_environ()):
        await wait_for(gone_offline, within=15)
    events = await outbox_events(aws, res.devices_stream_arn)
    assert [e["type"] for e in events if e["aggregate_id"] == "gone"] == [
        "DeviceConnected", "DeviceDisconnected"]


async def test_simulate_reports_the_time_until_every_presence_event_is_sent(
    aws: AwsClients,
) -> None:
    """Presence events go out from their own task and can finish well after the telemetry
    (a slow bus); the report's time and rate cover both, so `fleetline simulate` does not
    claim a rate the fleet did not reach."""
    kinesis = await aws.client("kinesis")
    events = await aws.client("events")
    await kinesis.create_stream(StreamName="presence-drain", ShardCount=1)
    await events.create_event_bus(Name="presence-drain")
    devices = 4000
    fleet = FleetConfig(devices=devices, tenants=4, zone="eu", eu_share=1.0, seed=3)
    started = time.monotonic()
    # one record per device: every device starts, so every one sends a presence event
    report = await simulate(aws, fleet, stream="presence-drain", bus="presence-drain",
                            rate=1_000_000, count=devices)
    took = time.monotonic() - started
    assert report.records == devices
    assert report.presence_events == devices
    assert report.elapsed >= 0.9 * took, (report.elapsed, took)
    assert report.rate <= devices / (0.9 * took)
