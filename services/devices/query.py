"""The query API of the devices context. Reads only the read model (DeviceReadModelTable).

    q = DeviceQueries(aws, table)
    await q.device("t-001", "dev-000001")           # DeviceRecord | None
    await q.devices_by_status("t-001", "online")    # DevicePage (cursor for the next page)
    await q.fleet_counts("t-001")                   # FleetCounts

Every query names the tenant, and every key condition starts with it, so a caller scoped to
one tenant (the dashboard derives it from the viewer's token) cannot read another's devices.

Fleet counts use `Select=COUNT` queries on the `by-tenant-status` index (one per status) and
one filtered count of devices with open alarms: no item data travels, but each counted item
is still read (read units grow with the tenant's fleet). The dashboard therefore counts from
its own in-memory view and asks here only at start-up.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from services.devices.events import Status
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.dynamodb import from_item, to_item

__all__ = ["DevicePage", "DeviceQueries", "DeviceRecord", "FleetCounts", "InvalidQueryError"]

STATUS_INDEX: Final = "by-tenant-status"
MAX_PAGE: Final = 500


class InvalidQueryError(ValueError):
    """A query parameter is out of range; the message names it."""


class DeviceRecord(BaseModel):
    """A device as the read model has it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant_id: str
    device_id: str
    status: Status
    zone: str
    seq: int = 0
    last_seen: float = 0.0
    firmware: str | None = None
    readings: dict[str, float] = Field(default_factory=dict)
    reported: dict[str, Any] = Field(default_factory=dict)
    desired: dict[str, Any] = Field(default_factory=dict)
    delta: dict[str, Any] = Field(default_factory=dict)
    alarms: dict[str, str] = Field(default_factory=dict)
    event_seq: int = 0
    event_type: str | None = None
    updated_at: str | None = None


class DevicePage(BaseModel):
    model_config = ConfigDict(frozen=True)

    devices: list[DeviceRecord]
    cursor: str | None = None


class FleetCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant_id: str
    total: int
    online: int
    offline: int
    unknown: int
    with_alarms: int


def _encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _decode_cursor(cursor: str, tenant_id: str) -> dict[str, Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise InvalidQueryError("cursor: not a cursor this API returned") from None
    if not isinstance(key, dict) or key.get("tenant_id") != {"S": tenant_id}:
        raise InvalidQueryError("cursor: belongs to another query")
    return key


class DeviceQueries:
    def __init__(self, aws: AwsClients, table: str) -> None:
        if not table:
            raise ValueError("table must name the device read-model table")
        self._aws = aws
        self.table = table

    @classmethod
    def from_environ(cls, aws: AwsClients) -> DeviceQueries:
        """Raises ConfigurationError when FLEETLINE_DEVICE_READ_MODEL_TABLE is not set."""
        return cls(aws, Resources.from_environ().get("DeviceReadModelTable"))

    async def device(self, tenant_id: str, device_id: str) -> DeviceRecord | None:
        """The device, or None when the tenant has no such device."""
        dynamodb = await self._aws.client("dynamodb")
        with aws_errors():
            response = await dynamodb.get_item(
                TableName=self.table, Key=to_item({"tenant_id": tenant_id, "device_id": device_id})
            )
        item = response.get("Item")
        return DeviceRecord.model_validate(from_item(item)) if item else None

    async def devices_by_status(
        self, tenant_id: str, status: Status | str, *, limit: int = 50, cursor: str | None = None
    ) -> DevicePage:
        """Devices of the tenant with `status`, a page at a time.

        Raises:
            InvalidQueryError: `status` unknown, `limit` outside 1..500, or a foreign cursor.
        """
        try:
            wanted = Status(status)
        except ValueError:
            raise InvalidQueryError(
                f"status: must be one of {[s.value for s in Status]}"
            ) from None
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQueryError(f"limit: must be between 1 and {MAX_PAGE}")
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "tenant_id = :t AND #s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":t": {"S": tenant_id}, ":s": {"S": wanted.value}},
            "Limit": limit,
        }
        if cursor:
            kwargs["ExclusiveStartKey"] = _decode_cursor(cursor, tenant_id)
        dynamodb = await self._aws.client("dynamodb")
        with aws_errors():
            response = await dynamodb.query(**kwargs)
        devices = [DeviceRecord.model_validate(from_item(i)) for i in response.get("Items", [])]
        return DevicePage(devices=devices,
                          cursor=_encode_cursor(response.get("LastEvaluatedKey")))

    async def fleet_counts(self, tenant_id: str) -> FleetCounts:
        """Devices of the tenant per status, and how many have open alarms."""
        counts = {s: await self._count_status(tenant_id, s) for s in Status}
        with_alarms = await self._count(
            TableName=self.table,
            KeyConditionExpression="tenant_id = :t",
            FilterExpression="alarm_count > :zero",
            ExpressionAttributeValues={":t": {"S": tenant_id}, ":zero": {"N": "0"}},
        )
        return FleetCounts(
            tenant_id=tenant_id,
            total=sum(counts.values()),
            online=counts[Status.ONLINE],
            offline=counts[Status.OFFLINE],
            unknown=counts[Status.UNKNOWN],
            with_alarms=with_alarms,
        )

    async def _count_status(self, tenant_id: str, status: Status) -> int:
        return await self._count(
            TableName=self.table,
            IndexName=STATUS_INDEX,
            KeyConditionExpression="tenant_id = :t AND #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":t": {"S": tenant_id}, ":s": {"S": status.value}},
        )

    async def _count(self, **kwargs: Any) -> int:
        dynamodb = await self._aws.client("dynamodb")
        total = 0
        while True:
            with aws_errors():
                response = await dynamodb.query(Select="COUNT", **kwargs)
            total += int(response.get("Count", 0))
            last = response.get("LastEvaluatedKey")
            if not last:
                return total
            kwargs["ExclusiveStartKey"] = last

    async def all_devices(self, tenant_id: str | None = None) -> list[DeviceRecord]:
        """Every device (of one tenant, or of all with a Scan). For the dashboard's start-up
        and for tests; not for request paths."""
        dynamodb = await self._aws.client("dynamodb")
        out: list[DeviceRecord] = []
        kwargs: dict[str, Any] = {"TableName": self.table}
        if tenant_id is not None:
            kwargs.update(KeyConditionExpression="tenant_id = :t",
                          ExpressionAttributeValues={":t": {"S": tenant_id}})
        while True:
            with aws_errors():
                response = await (dynamodb.query(**kwargs) if tenant_id is not None
                                  else dynamodb.scan(**kwargs))
            out.extend(DeviceRecord.model_validate(from_item(i))
                       for i in response.get("Items", []) if "status" in i)
            last = response.get("LastEvaluatedKey")
            if not last:
                return out
            kwargs["ExclusiveStartKey"] = last
