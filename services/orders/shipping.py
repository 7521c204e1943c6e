"""The shipping service: creates (and cancels) the shipment of an order.

Shipping is the warehouse's dispatch desk, so its records live in the inventory table
(`SHIP#<order> / SHIPMENT`: status CREATED | CANCELLED, shipment id, address); the
template gives it no table of its own. Destinations in `UNSERVED_COUNTRIES` fail the step
with ShippingUnavailable, which is how a saga fails *after* payment authorization (the
compensation path that voids a hold and releases stock).

Saga actions (task queue `ShippingTasksQueue`): create, cancel (a CANCELLED tombstone when
nothing was created, so a late create is refused with ShipmentClosed).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from services.orders import _store
from services.orders.errors import ShipmentClosed, ShippingUnavailable
from services.orders.tasks import CallbackTasks, TaskOrder, TaskRequest
from shared.aws import AwsClients
from shared.errors import ConditionFailedError, RetryableError
from shared.hosts import SqsQueue, Worker

__all__ = ["UNSERVED_COUNTRIES", "Shipping", "tasks", "worker"]

UNSERVED_COUNTRIES: Final = frozenset({"AQ"})  # Antarctica: no carrier
_MAX_RACES = 4


class _Race(RetryableError):
    """The shipment changed between read and write more often than expected."""


class Shipping:
    def __init__(self, aws: AwsClients, *, table: str) -> None:
        self._aws = aws
        self.table = table

    async def _get(self, order_id: str) -> dict[str, Any] | None:
        ddb = await self._aws.client("dynamodb")
        return await _store.get(ddb, self.table, f"SHIP#{order_id}", "SHIPMENT")

    async def create(self, order: TaskOrder) -> dict[str, Any]:
        """Create the shipment once.

        Raises:
            ShippingUnavailable: no carrier serves the destination.
            ShipmentClosed: the saga cancelled the shipment already.
        """
        ddb = await self._aws.client("dynamodb")
        for _ in range(_MAX_RACES):
            item = await self._get(order.order_id)
            if item is not None:
                if item["status"] == "CREATED":
                    return {"shipment_id": item["shipment_id"], "repeat": True}
                raise ShipmentClosed(f"shipment of {order.order_id} was cancelled")
            country = order.shipping_address.country if order.shipping_address else None
            if country in UNSERVED_COUNTRIES:
                raise ShippingUnavailable(f"no carrier ships to {country}")
            shipment_id = "sh-" + hashlib.sha256(order.order_id.encode()).hexdigest()[:16]
            try:
                await _store.put_if_absent(ddb, self.table, {
                    "pk": f"SHIP#{order.order_id}", "sk": "SHIPMENT", "status": "CREATED",
                    "shipment_id": shipment_id, "country": country,
                    "lines": [line.model_dump() for line in order.items],
                })
            except ConditionFailedError:
                continue
            return {"shipment_id": shipment_id}
        raise _Race(f"shipment of {order.order_id} kept racing")

    async def cancel(self, order: TaskOrder) -> dict[str, Any]:
        """Cancel the shipment (idempotent; a tombstone when none was created)."""
        ddb = await self._aws.client("dynamodb")
        for _ in range(_MAX_RACES):
            item = await self._get(order.order_id)
            if item is None:
                try:
                    await _store.put_if_absent(ddb, self.table, {
                        "pk": f"SHIP#{order.order_id}", "sk": "SHIPMENT",
                        "status": "CANCELLED", "tombstone": True,
                    })
                except ConditionFailedError:
                    continue
                return {"status": "CANCELLED", "tombstone": True}
            if item["status"] == "CANCELLED":
                return {"status": "CANCELLED", "repeat": True}
            if not await _store.set_status_if(ddb, self.table, f"SHIP#{order.order_id}",
                                              "SHIPMENT", expect="CREATED", to="CANCELLED"):
                continue
            return {"status": "CANCELLED", "shipment_id": item.get("shipment_id")}
        raise _Race(f"cancel of {order.order_id} kept racing")


def tasks(aws: AwsClients, *, table: str) -> CallbackTasks:
    """The shipping worker's task handler."""
    shipping = Shipping(aws, table=table)

    async def create(task: TaskRequest) -> dict[str, Any]:
        return await shipping.create(task.order)

    async def cancel(task: TaskRequest) -> dict[str, Any]:
        return await shipping.cancel(task.order)

    return CallbackTasks(aws, {"create": create, "cancel": cancel}, service="shipping")


worker = Worker(
    name="orders-shipping",
    source=SqsQueue("ShippingTasksQueue"),
    handler=lambda aws, resources: tasks(aws, table=resources.get("InventoryTable"))
    .batch_handler(),
)
"""`python -m shared.hosts.worker services.orders.shipping:worker` (the ECS service)."""
