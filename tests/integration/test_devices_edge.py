"""The edge path end to end, locally: IoT-rule-shaped payloads into the ingest function
(`services.devices.ingest.handler`, called as the IoT rule calls it), and presence events as
the simulator puts them, reach the device through the bus's edge rules (EdgeStateRule,
EdgePresenceRule: source `fleetline.iot` to the telemetry stream, the template's patterns and
partition keys), and the telemetry worker applies them: a reported state, a disconnect, a
connect. Before the rules, these events matched nothing and reached nobody."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from services.devices import ingest
from services.devices._store import DynamoDeviceStore
from services.devices.telemetry import TelemetryConfig, TelemetryProcessor
from shared.aws import AwsClients
from shared.cloudformation import load_template
from tests.integration._devices_support import create_device_resources, device_docs
from tests.integration.orders_support import eventually
from tests.integration.test_devices_telemetry import consumer_for

pytestmark = pytest.mark.emulator

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


async def _edge_rules(aws: AwsClients, bus: str, stream: str) -> None:
    """The template's edge rules (pattern and partition key as declared) on `bus`."""
    resources = load_template(TEMPLATE)["Resources"]
    events = await aws.client("events")
    kinesis = await aws.client("kinesis")
    stream_arn = (await kinesis.describe_stream_summary(StreamName=stream))[
        "StreamDescriptionSummary"]["StreamARN"]
    for name in ("EdgePresenceRule", "EdgeStateRule"):
        props = resources[name]["Properties"]
        target = props["Targets"][0]
        await events.put_rule(Name=name, EventBusName=bus,
                              EventPattern=json.dumps(props["EventPattern"]))
        await events.put_targets(Rule=name, EventBusName=bus, Targets=[{
            "Id": "stream", "Arn": stream_arn, "RoleArn": "arn:aws:iam::123456789012:role/x",
            "KinesisParameters": target["KinesisParameters"]}])


async def test_state_reports_and_presence_from_the_edge_reach_the_device(
    aws: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = await create_device_resources(aws, prefix="edge", shards=1)
    events = await aws.client("events")
    await events.create_event_bus(Name="edge-devices")
    await _edge_rules(aws, "edge-devices", res.stream)
    for key, value in {"FLEETLINE_DEVICE_EVENTS_BUS_NAME": "edge-devices",
                       "FLEETLINE_RESIDENCY_ZONE": "eu",
                       "FLEETLINE_TELEMETRY_FAILURE_QUEUE": res.failure_queue_url,
                       "FLEETLINE_ALARMS_TOPIC": "unused"}.items():
        monkeypatch.setenv(key, value)
    kinesis = await aws.client("kinesis")
    now = time.time()
    # the device's first reading, straight to the stream as the telemetry rule writes it
    await kinesis.put_record(StreamName=res.stream, PartitionKey="d-1", Data=json.dumps({
        "device_id": "d-1", "tenant_id": "t-1", "zone": "eu", "seq": 1, "ts": now - 5,
        "readings": {"temperature": 20.0}}).encode())
    # what the IoT rule hands the function: the payload plus topic fields (state channel)
    iot_payload: dict[str, Any] = {
        "deviceId": "d-1", "tenantId": "t-1", "channel": "state",
        "received_at": int((now - 4) * 1000), "state": {"reported": {"mode": "eco"}}}
    answer = await anyio.to_thread.run_sync(ingest.handler, iot_payload, None)
    assert answer["accepted"] is True, answer
    # a bad payload is refused with its reason and never reaches the bus
    refused = await anyio.to_thread.run_sync(ingest.handler, {"deviceId": "d-1"}, None)
    assert refused == {"accepted": False,
                       "reason": "tenant_id: must be a non-empty string of at most 128 "
                                 "characters"}
    # presence as the simulator sends it: offline after the report
    await events.put_events(Entries=[{
        "EventBusName": "edge-devices", "Source": "fleetline.iot",
        "DetailType": "DevicePresence", "Detail": json.dumps({
            "device_id": "d-1", "tenant_id": "t-1", "zone": "eu", "status": "offline",
            "ts": now - 3})}])

    processor = TelemetryProcessor(DynamoDeviceStore(aws, res.devices_table),
                                   TelemetryConfig(zone="eu", last_seen_interval=0))
    consumer = consumer_for(aws, res, processor)

    async def settled() -> dict[str, Any] | None:
        doc = (await device_docs(aws, res.devices_table)).get("d-1")
        if doc and doc.get("reported") == {"mode": "eco"} and doc.get("status") == "offline":
            return doc
        return None

    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        doc = await eventually(settled, within=30, what="the edge facts applied to d-1")
        tg.cancel_scope.cancel()
    assert doc["readings"] == {"temperature": 20.0}
    stats = processor.statistics()
    assert stats.malformed == 0
    assert stats.applied == 3  # the reading, the report, the presence
    # the events the edge facts caused (and the first reading's connect)
    assert stats.events_by_type["DeviceStateChanged"] == 1
    assert stats.events_by_type["DeviceDisconnected"] == 1
    assert stats.events_by_type["DeviceConnected"] == 1
