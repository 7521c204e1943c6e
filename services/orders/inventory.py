"""The inventory service: stock per sku and one reservation per order, in its own table.

Items (InventoryTable, pk/sk):
    SKU#<sku>   / STOCK         initial, available, reserved, shipped
    RES#<order> / RESERVATION   status (RESERVED | COMMITTED | RELEASED), lines

Invariant, per sku: initial = available + reserved + shipped. Every change moves a quantity
between two of the counters and the reservation's status in one TransactWriteItems, guarded
by the reservation's status, so a retried or redelivered task cannot apply twice.

Saga actions (task queue `InventoryTasksQueue`):
    reserve   available -> reserved          (OutOfStock when a sku is short)
    commit    reserved  -> shipped
    release   reserved  -> available, or shipped -> available after a commit; with nothing
              reserved, a RELEASED tombstone, so a reserve still in flight is refused
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.orders import _store
from services.orders.domain import (
    CommitDecision,
    ReleaseDecision,
    ReservationStatus,
    ReserveDecision,
    StockRow,
    decide_commit,
    decide_release,
    decide_reserve,
)
from services.orders.errors import OutOfStock, ReservationClosed, ReservationMissing
from services.orders.events import OrderLine
from services.orders.tasks import CallbackTasks, TaskRequest
from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError, RetryableError

__all__ = ["Inventory", "stock_rows", "worker"]

_MAX_RACES = 4  # re-reads after a lost race before giving up (the step retries then)


class _Race(RetryableError):
    """The reservation changed between read and write more often than expected."""


def _res_key(order_id: str) -> dict[str, Any]:
    return _store.to_item({"pk": f"RES#{order_id}", "sk": "RESERVATION"})


def _sku_key(sku: str) -> dict[str, Any]:
    return _store.to_item({"pk": f"SKU#{sku}", "sk": "STOCK"})


class Inventory:
    """Stock operations over the inventory table."""

    def __init__(self, aws: AwsClients, *, table: str) -> None:
        self._aws = aws
        self.table = table

    async def seed(self, stock: Mapping[str, int]) -> None:
        """Set each sku's initial and available stock (overwrites: for demos and tests)."""
        ddb = await self._aws.client("dynamodb")
        for sku, quantity in stock.items():
            with aws_errors():
                await ddb.put_item(TableName=self.table, Item=_store.to_item({
                    "pk": f"SKU#{sku}", "sk": "STOCK", "sku": sku, "initial": quantity,
                    "available": quantity, "reserved": 0, "shipped": 0,
                }))

    async def _status(
        self, order_id: str
    ) -> tuple[ReservationStatus | None, dict[str, Any] | None]:
        ddb = await self._aws.client("dynamodb")
        item = await _store.get(ddb, self.table, f"RES#{order_id}", "RESERVATION")
        return (ReservationStatus(item["status"]) if item else None), item

    async def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Run a transaction; None on success, else the cancellation reason codes."""
        ddb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                await ddb.transact_write_items(TransactItems=items)
        except AwsRequestError as exc:
            if exc.code != "TransactionCanceledException":
                raise
            reasons = getattr(exc.__cause__, "response", {}).get("CancellationReasons", [])
            return [str(r.get("Code", "None")) for r in reasons]
        return None

    def _move(self, line: OrderLine, frm: str, to: str, *, guard: bool) -> dict[str, Any]:
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": _sku_key(line.sku),
            "UpdateExpression": f"SET {frm} = {frm} - :q, {to} = {to} + :q",
            "ExpressionAttributeValues": _store.to_item({":q": line.quantity}),
        }
        update["ConditionExpression"] = (
            f"attribute_exists(pk) AND {frm} >= :q" if guard else "attribute_exists(pk)"
        )
        return {"Update": update}

    async def reserve(self, order_id: str, lines: Sequence[OrderLine]) -> dict[str, Any]:
        """Reserve every line or none.

        Raises:
            OutOfStock: a sku is unknown or short (nothing is reserved).
            ReservationClosed: the saga released this order already.
        """
        for _ in range(_MAX_RACES):
            status, _item = await self._status(order_id)
            decision = decide_reserve(status)
            if decision is ReserveDecision.ALREADY_DONE:
                return {"reservation_id": order_id, "status": status, "repeat": True}
            if decision is ReserveDecision.CLOSED:
                raise ReservationClosed(f"order {order_id} was released before reserving")
            put = {"Put": {
                "TableName": self.table,
                "Item": _store.to_item({
                    "pk": f"RES#{order_id}", "sk": "RESERVATION",
                    "status": ReservationStatus.RESERVED.value,
                    "lines": [line.model_dump() for line in lines],
                }),
                "ConditionExpression": "attribute_not_exists(pk)",
            }}
            moves = [self._move(line, "available", "reserved", guard=True) for line in lines]
            reasons = await self._transact([put, *moves])
            if reasons is None:
                return {"reservation_id": order_id, "status": ReservationStatus.RESERVED}
            if reasons[0] == "ConditionalCheckFailed":
                continue  # the reservation appeared meanwhile: decide again
            short = [line.sku for line, code in zip(lines, reasons[1:], strict=False)
                     if code == "ConditionalCheckFailed"]
            if short:
                raise OutOfStock(f"not enough stock for {', '.join(short)}")
            raise _Race(f"reservation transaction cancelled: {reasons}")
        raise _Race(f"reservation of {order_id} kept racing")

    async def commit(self, order_id: str) -> dict[str, Any]:
        """Reserved stock leaves the warehouse (reserved -> shipped).

        Raises:
            ReservationMissing: nothing is reserved for the order.
        """
        for _ in range(_MAX_RACES):
            status, item = await self._status(order_id)
            decision = decide_commit(status)
            if decision is CommitDecision.ALREADY_DONE:
                return {"status": ReservationStatus.COMMITTED, "repeat": True}
            if decision is CommitDecision.MISSING or item is None:
                raise ReservationMissing(f"order {order_id} has no live reservation ({status})")
            lines = [OrderLine.model_validate(x) for x in item["lines"]]
            if await self._transact([
                self._flip(order_id, ReservationStatus.RESERVED, ReservationStatus.COMMITTED),
                *[self._move(line, "reserved", "shipped", guard=True) for line in lines],
            ]) is None:
                return {"status": ReservationStatus.COMMITTED}
        raise _Race(f"commit of {order_id} kept racing")

    async def release(self, order_id: str) -> dict[str, Any]:
        """Undo the reservation, whatever state it is in (idempotent)."""
        for _ in range(_MAX_RACES):
            status, item = await self._status(order_id)
            decision = decide_release(status)
            if decision is ReleaseDecision.NOOP:
                return {"status": ReservationStatus.RELEASED, "repeat": True}
            if decision is ReleaseDecision.TOMBSTONE:
                ddb = await self._aws.client("dynamodb")
                try:
                    await _store.put_if_absent(ddb, self.table, {
                        "pk": f"RES#{order_id}", "sk": "RESERVATION",
                        "status": ReservationStatus.RELEASED.value, "lines": [],
                        "tombstone": True,
                    })
                except _store.ConditionFailed:
                    continue
                return {"status": ReservationStatus.RELEASED, "tombstone": True}
            assert item is not None
            assert status is not None
            lines = [OrderLine.model_validate(x) for x in item["lines"]]
            frm = "reserved" if decision is ReleaseDecision.APPLY else "shipped"
            if await self._transact([
                self._flip(order_id, status, ReservationStatus.RELEASED),
                *[self._move(line, frm, "available", guard=False) for line in lines],
            ]) is None:
                return {"status": ReservationStatus.RELEASED}
        raise _Race(f"release of {order_id} kept racing")

    def _flip(self, order_id: str, frm: ReservationStatus, to: ReservationStatus
              ) -> dict[str, Any]:
        return {"Update": {
            "TableName": self.table,
            "Key": _res_key(order_id),
            "UpdateExpression": "SET #s = :to",
            "ConditionExpression": "#s = :from",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": _store.to_item({":to": to.value, ":from": frm.value}),
        }}

    async def stock(self) -> list[StockRow]:
        """Every sku's counters (a scan: for audits, tests and the CLI)."""
        ddb = await self._aws.client("dynamodb")
        rows: list[StockRow] = []
        kwargs: dict[str, Any] = {"TableName": self.table}
        while True:
            with aws_errors():
                page = await ddb.scan(**kwargs)
            for raw in page.get("Items", ()):
                item = _store.plain(raw)
                if item["sk"] == "STOCK":
                    rows.append(StockRow(sku=item["sku"], initial=item["initial"],
                                         available=item["available"], reserved=item["reserved"],
                                         shipped=item["shipped"]))
            if "LastEvaluatedKey" not in page:
                return sorted(rows, key=lambda r: r.sku)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def stock_rows(aws: AwsClients, table: str) -> list[StockRow]:
    return await Inventory(aws, table=table).stock()


def tasks(aws: AwsClients, *, table: str) -> CallbackTasks:
    """The inventory worker's task handler."""
    inventory = Inventory(aws, table=table)

    async def reserve(task: TaskRequest) -> dict[str, Any]:
        return await inventory.reserve(task.order.order_id, task.order.items)

    async def commit(task: TaskRequest) -> dict[str, Any]:
        return await inventory.commit(task.order.order_id)

    async def release(task: TaskRequest) -> dict[str, Any]:
        return await inventory.release(task.order.order_id)

    return CallbackTasks(aws, {"reserve": reserve, "commit": commit, "release": release},
                         service="inventory")


worker = tasks  # placeholder until the worker host's factory shape is known
