"""The device read model (CQRS): DeviceReadModelTable, built from device events.

Every device event carries the device's snapshot after its transition (event-carried state),
so the projection is one conditional PutItem per event: the item is replaced only when the
event's per-device `sequence` is higher than the one stored. That single condition is the
inbox (a redelivered or replayed event is a DUPLICATE, skipped and counted) and the order
guard (an older event arriving late changes nothing), in one write unit.

Item (partition key `tenant_id`, sort key `device_id`; GSI `by-tenant-status` on
`tenant_id` + `status`): the snapshot's fields, `alarm_count`, and `event_seq`, `event_id`,
`event_type`, `updated_at` of the event that wrote it.

Worker (`services.devices.projection:worker`): an SQS consumer of DeviceProjectionQueue
(every `fleetline.devices` event from the bus, rule DeviceProjectionRule).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import BaseModel

from services.devices.events import DeviceEvent
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import (
    BatchHandler,
    DuplicateEvent,
    HandlerContext,
    SqsSettings,
    batch_handler,
)
from shared.dynamodb import to_item
from shared.errors import ConditionFailedError
from shared.events import TypedEvent, load_registered_events, registry
from shared.hosts import SqsQueue, Worker

__all__ = ["ReadModel", "projection_handler", "read_model_item", "worker"]

log = structlog.get_logger("services.devices.projection")

def read_model_item(event: DeviceEvent, *, event_id: str, sequence: int,
                    event_type: str, time: str) -> dict[str, Any]:
    """The read-model item an event leaves behind (pure)."""
    device = event.device
    return {
        "tenant_id": device.tenant_id,
        "device_id": device.device_id,
        "status": str(device.status),
        "zone": device.zone,
        "seq": device.seq,
        "last_seen": device.last_seen,
        "firmware": device.firmware,
        "readings": dict(device.readings),
        "reported": dict(device.reported),
        "desired": dict(device.desired),
        "delta": dict(device.delta),
        "alarms": {k: str(v) for k, v in device.alarms.items()},
        "alarm_count": len(device.alarms),
        "event_seq": sequence,
        "event_id": event_id,
        "event_type": event_type,
        "updated_at": time,
    }


class ReadModel:
    """Writes to DeviceReadModelTable (thin)."""

    def __init__(self, aws: AwsClients, table: str) -> None:
        if not table:
            raise ValueError("table must name the device read-model table")
        self._aws = aws
        self.table = table

    async def apply(self, item: Mapping[str, Any]) -> bool:
        """Put `item` unless the stored one has the same or a higher `event_seq`.
        Returns False when it was older or a repeat (nothing written).

        Raises:
            AwsUnavailableError / AwsRequestError: the write failed (translated).
        """
        dynamodb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                await dynamodb.put_item(
                    TableName=self.table,
                    Item=to_item(item),
                    ConditionExpression="attribute_not_exists(device_id) OR event_seq < :seq",
                    ExpressionAttributeValues={":seq": {"N": str(item["event_seq"])}},
                )
        except ConditionFailedError:
            return False
        return True


def projection_handler(read_model: ReadModel) -> BatchHandler:
    """The BatchHandler: decode with the event registry, project device events, ignore
    other types (the bus may carry heartbeats), DUPLICATE for repeats and late events."""

    async def handle(event: TypedEvent[BaseModel], ctx: HandlerContext) -> None:
        data = event.data
        if not isinstance(data, DeviceEvent):
            return
        envelope = event.envelope
        item = read_model_item(
            data, event_id=envelope.id, sequence=envelope.sequence, event_type=envelope.type,
            time=envelope.time.isoformat(),
        )
        if not await read_model.apply(item):
            raise DuplicateEvent(f"event {envelope.id} (sequence {envelope.sequence}) is not "
                                 f"newer than the read model of {data.device.device_id}")

    return batch_handler(handle, decode=lambda m: registry.decode(m.body))


def _handler(aws: AwsClients, resources: Resources) -> BatchHandler:
    load_registered_events()
    return projection_handler(ReadModel(aws, resources.get("DeviceReadModelTable")))


def worker() -> Worker:
    """The ECS task (`python -m shared.hosts.worker services.devices.projection:worker`)."""
    wait = int(os.environ.get("FLEETLINE_WAIT_TIME_SECONDS", "20"))
    return Worker(
        name="device-projection",
        source=SqsQueue("DeviceProjectionQueue", SqsSettings(wait_time_seconds=wait)),
        handler=_handler,
    )
