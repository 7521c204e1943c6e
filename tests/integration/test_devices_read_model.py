"""The read model and the query API against the emulator: projection applies the newest
event per device once, queries stay inside the tenant."""

from __future__ import annotations

import json

import pytest

from services.devices.events import (
    DeviceConnected,
    DeviceDisconnected,
    DeviceEvent,
    DeviceView,
    Severity,
    Status,
    ThresholdBreached,
)
from services.devices.projection import ReadModel, projection_handler
from services.devices.query import DeviceQueries, InvalidQueryError
from shared.aws import AwsClients
from shared.consumers import Message, Outcome, SourceKind
from shared.events import Envelope, load_registered_events

pytestmark = pytest.mark.emulator


async def create_read_model(aws: AwsClients, name: str) -> None:
    dynamodb = await aws.client("dynamodb")
    await dynamodb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "tenant_id", "KeyType": "HASH"},
                   {"AttributeName": "device_id", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                              for n in ("tenant_id", "device_id", "status")],
        GlobalSecondaryIndexes=[{
            "IndexName": "by-tenant-status",
            "KeySchema": [{"AttributeName": "tenant_id", "KeyType": "HASH"},
                          {"AttributeName": "status", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
    )


def view(device: str, tenant: str, status: Status, **kw: object) -> DeviceView:
    return DeviceView(device_id=device, tenant_id=tenant, zone="eu", status=status, seq=3,
                      last_seen=10.0, firmware="1.0", **kw)  # type: ignore[arg-type]


def message(event: DeviceEvent, sequence: int) -> Message:
    envelope = Envelope.new(event, aggregate_id=event.device.device_id, sequence=sequence,
                            tenant_id=event.device.tenant_id)
    body = json.dumps({"detail-type": envelope.type, "source": envelope.source,
                       "detail": json.loads(envelope.to_json())})
    return Message(id=f"{event.device.device_id}-{sequence}-{envelope.id}", body=body,
                   source=SourceKind.SQS, source_name="q")


async def test_projection_and_queries(aws: AwsClients) -> None:
    load_registered_events()
    await create_read_model(aws, "read-model")
    handler = projection_handler(ReadModel(aws, "read-model"))
    a1 = [
        message(DeviceConnected(device=view("a1", "t-a", Status.ONLINE)), 1),
        message(ThresholdBreached(
            device=view("a1", "t-a", Status.ONLINE, alarms={"temperature": Severity.CRITICAL}),
            metric="temperature", value=90, limit=80, bound="max",
            severity=Severity.CRITICAL), 2),
        message(DeviceDisconnected(
            device=view("a1", "t-a", Status.OFFLINE, alarms={"temperature": Severity.CRITICAL}),
            silent_for=61), 3),
    ]
    others = [message(DeviceConnected(device=view(f"a{i}", "t-a", Status.ONLINE)), 1)
              for i in range(2, 5)]
    others.append(message(DeviceConnected(device=view("b1", "t-b", Status.ONLINE)), 1))
    # newest first, then the older ones and a repeat: the newest must win
    result = await handler([a1[2], *others])
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    late = await handler([a1[0], a1[1], a1[2]])
    assert set(late.outcomes.values()) == {Outcome.DUPLICATE}

    queries = DeviceQueries(aws, "read-model")
    device = await queries.device("t-a", "a1")
    assert device is not None
    assert device.status is Status.OFFLINE
    assert device.alarms == {"temperature": "critical"}
    assert device.event_seq == 3
    assert await queries.device("t-b", "a1") is None  # another tenant's device is invisible

    first = await queries.devices_by_status("t-a", "online", limit=2)
    assert len(first.devices) == 2
    assert first.cursor is not None
    rest = await queries.devices_by_status("t-a", "online", limit=2, cursor=first.cursor)
    ids = {d.device_id for d in first.devices + rest.devices}
    assert ids == {"a2", "a3", "a4"}
    with pytest.raises(InvalidQueryError, match="cursor"):
        await queries.devices_by_status("t-b", "online", cursor=first.cursor)
    with pytest.raises(InvalidQueryError, match="status"):
        await queries.devices_by_status("t-a", "sleeping")

    counts = await queries.fleet_counts("t-a")
    assert (counts.total, counts.online, counts.offline, counts.with_alarms) == (4, 3, 1, 1)
    assert (await queries.fleet_counts("t-b")).total == 1
