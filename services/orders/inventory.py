"""The inventory service: stock per sku and one reservation per order, in its own table.

Items (InventoryTable, pk/sk):
    SKU#<sku>   / STOCK         initial, available, reserved, shipped,
                                holds {order: qty}, returned {order: qty}
    RES#<order> / RESERVATION   status (RESERVING | RESERVED | COMMITTED | RELEASED),
                                released_from, lines

Invariant, per sku: initial = available + reserved + shipped, and reserved = sum(holds).

No transactions: every stock change is ONE conditional UpdateItem of one sku item that
moves a quantity between two counters and records the order in the item (`holds`,
`returned`), so repeating it is refused by its own condition and it is idempotent on its
own. The reservation item is the saga-facing state machine; its status flips
(conditional writes) order the per-sku steps, and every action re-runs the per-sku steps of
the state it finds, so a worker that died half-way is finished by the retry. Single-item
writes cost 1 write unit instead of a transaction's 2 per item, never conflict across
orders. (They were also the way around moto's TransactWriteItems, whose rollback restored a
copy of the whole table; the emulator now backs up only the items a transaction touches.)

Saga actions (task queue `InventoryTasksQueue`):
    reserve   claim RESERVING, hold each sku (available -> reserved), flip RESERVED.
              A short sku: undo the holds placed, RELEASED, OutOfStock.
    commit    flip COMMITTED, move each hold to shipped.
    release   flip RELEASED (remembering from what), then undo: holds -> available, or
              after a commit shipped -> available. With nothing reserved, a RELEASED
              tombstone, so a reserve still in flight is refused (ReservationClosed).
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
    UndoKind,
    decide_commit,
    decide_release,
    decide_reserve,
    undo_kind,
)
from services.orders.errors import OutOfStock, ReservationClosed, ReservationMissing
from services.orders.events import OrderLine
from services.orders.tasks import CallbackTasks, TaskRequest
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.dynamodb import from_item, to_item
from shared.errors import ConditionFailedError, RetryableError
from shared.hosts import SqsQueue, Worker

__all__ = ["Inventory", "tasks", "worker"]

_MAX_RACES = 4  # re-reads after a lost race before giving up (the step retries then)


class _Race(RetryableError):
    """The reservation changed between read and write more often than expected."""


class Inventory:
    """Stock operations over the inventory table."""

    def __init__(self, aws: AwsClients, *, table: str) -> None:
        self._aws = aws
        self.table = table

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None) -> Inventory:
        return cls(aws, table=(resources or Resources.from_environ()).get("InventoryTable"))

    async def seed(self, stock: Mapping[str, int]) -> None:
        """Set each sku's initial and available stock (overwrites: for demos and tests)."""
        ddb = await self._aws.client("dynamodb")
        for sku, quantity in stock.items():
            with aws_errors():
                await ddb.put_item(TableName=self.table, Item=to_item({
                    "pk": f"SKU#{sku}", "sk": "STOCK", "sku": sku, "initial": quantity,
                    "available": quantity, "reserved": 0, "shipped": 0, "holds": {},
                    "returned": {},
                }))

    # --- one sku, one conditional write ---------------------------------------------------

    async def _sku_update(self, sku: str, order_id: str, quantity: int, *, update: str,
                          condition: str) -> tuple[bool, dict[str, Any] | None]:
        """(applied, the item as it was when the condition failed)."""
        ddb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                await ddb.update_item(
                    TableName=self.table,
                    Key=to_item({"pk": f"SKU#{sku}", "sk": "STOCK"}),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#o": order_id},
                    ExpressionAttributeValues=to_item({":q": quantity}),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailedError as exc:
            return False, _store.old_item(exc)
        return True, None

    async def _hold(self, order_id: str, line: OrderLine) -> bool:
        """available -> reserved for this order; False when the sku is short or unknown."""
        applied, old = await self._sku_update(
            line.sku, order_id, line.quantity,
            update="SET available = available - :q, reserved = reserved + :q, holds.#o = :q",
            condition="attribute_exists(pk) AND available >= :q "
                      "AND attribute_not_exists(holds.#o)")
        return applied or bool(old and order_id in (old.get("holds") or {}))

    async def _unhold(self, order_id: str, line: OrderLine) -> None:
        await self._sku_update(
            line.sku, order_id, line.quantity,
            update="REMOVE holds.#o SET available = available + :q, reserved = reserved - :q",
            condition="attribute_exists(holds.#o)")

    async def _ship(self, order_id: str, line: OrderLine) -> None:
        await self._sku_update(
            line.sku, order_id, line.quantity,
            update="REMOVE holds.#o SET reserved = reserved - :q, shipped = shipped + :q",
            condition="attribute_exists(holds.#o)")

    async def _give_back(self, order_id: str, line: OrderLine) -> None:
        await self._ship(order_id, line)  # a commit that died half-way: finish it first
        await self._sku_update(
            line.sku, order_id, line.quantity,
            update="SET shipped = shipped - :q, available = available + :q, returned.#o = :q",
            condition="attribute_not_exists(returned.#o) AND shipped >= :q")

    # --- the reservation ------------------------------------------------------------------

    async def _reservation(self, order_id: str) -> tuple[ReservationStatus | None,
                                                         dict[str, Any] | None]:
        ddb = await self._aws.client("dynamodb")
        item = await _store.get(ddb, self.table, f"RES#{order_id}", "RESERVATION")
        return (ReservationStatus(item["status"]) if item else None), item

    async def _flip(self, order_id: str, frm: ReservationStatus, to: ReservationStatus) -> bool:
        ddb = await self._aws.client("dynamodb")
        return await _store.set_status_if(
            ddb, self.table, f"RES#{order_id}", "RESERVATION", expect=frm.value, to=to.value,
            also_set={"released_from": ":from"} if to is ReservationStatus.RELEASED else None,
        )

    @staticmethod
    def _lines(item: Mapping[str, Any] | None) -> list[OrderLine]:
        return [OrderLine.model_validate(x) for x in (item or {}).get("lines", [])]

    async def reserve(self, order_id: str, lines: Sequence[OrderLine]) -> dict[str, Any]:
        """Reserve every line or none.

        Raises:
            OutOfStock: a sku is unknown or short (nothing stays reserved).
            ReservationClosed: the saga released this order already.
        """
        ddb = await self._aws.client("dynamodb")
        for _ in range(_MAX_RACES):
            status, item = await self._reservation(order_id)
            decision = decide_reserve(status)
            if decision is ReserveDecision.ALREADY_DONE:
                return {"reservation_id": order_id, "status": status, "repeat": True}
            if decision is ReserveDecision.CLOSED:
                raise ReservationClosed(f"order {order_id} was released before reserving")
            if decision is ReserveDecision.CLAIM:
                try:
                    await _store.put_if_absent(ddb, self.table, {
                        "pk": f"RES#{order_id}", "sk": "RESERVATION",
                        "status": ReservationStatus.RESERVING.value,
                        "lines": [line.model_dump() for line in lines],
                    })
                except ConditionFailedError:
                    continue  # a twin claimed it: decide again
                wanted = list(lines)
            else:
                wanted = self._lines(item)
            short = [line.sku for line in wanted if not await self._hold(order_id, line)][:1]
            if short:
                await self._flip(order_id, ReservationStatus.RESERVING, ReservationStatus.RELEASED)
                for line in wanted:
                    await self._unhold(order_id, line)
                raise OutOfStock(f"not enough stock for {short[0]}")
            if await self._flip(order_id, ReservationStatus.RESERVING,
                                ReservationStatus.RESERVED):
                return {"reservation_id": order_id, "status": ReservationStatus.RESERVED}
            status, _ = await self._reservation(order_id)
            if status is ReservationStatus.RELEASED:  # compensated while we held: undo ours
                for line in wanted:
                    await self._unhold(order_id, line)
                raise ReservationClosed(f"order {order_id} was released while reserving")
        raise _Race(f"reservation of {order_id} kept racing")

    async def commit(self, order_id: str) -> dict[str, Any]:
        """Reserved stock leaves the warehouse (holds -> shipped).

        Raises:
            ReservationMissing: nothing is reserved for the order.
        """
        for _ in range(_MAX_RACES):
            status, item = await self._reservation(order_id)
            decision = decide_commit(status)
            if decision is CommitDecision.MISSING:
                raise ReservationMissing(f"order {order_id} has no live reservation ({status})")
            if decision is CommitDecision.FLIP and not await self._flip(
                    order_id, ReservationStatus.RESERVED, ReservationStatus.COMMITTED):
                continue
            for line in self._lines(item):
                await self._ship(order_id, line)
            return {"status": ReservationStatus.COMMITTED,
                    "repeat": decision is CommitDecision.MOVE}
        raise _Race(f"commit of {order_id} kept racing")

    async def release(self, order_id: str) -> dict[str, Any]:
        """Undo the reservation, whatever state it is in (idempotent)."""
        ddb = await self._aws.client("dynamodb")
        for _ in range(_MAX_RACES):
            status, item = await self._reservation(order_id)
            decision = decide_release(status)
            if decision is ReleaseDecision.TOMBSTONE:
                try:
                    await _store.put_if_absent(ddb, self.table, {
                        "pk": f"RES#{order_id}", "sk": "RESERVATION",
                        "status": ReservationStatus.RELEASED.value, "lines": [],
                        "tombstone": True,
                    })
                except ConditionFailedError:
                    continue
                return {"status": ReservationStatus.RELEASED, "tombstone": True}
            if decision is ReleaseDecision.FLIP:
                assert status is not None
                if not await self._flip(order_id, status, ReservationStatus.RELEASED):
                    continue
                released_from: ReservationStatus | None = status
            else:
                raw = (item or {}).get("released_from")
                released_from = ReservationStatus(raw) if raw else None
            kind = undo_kind(released_from)
            for line in self._lines(item):
                if kind is UndoKind.RETURN:
                    await self._give_back(order_id, line)
                else:
                    await self._unhold(order_id, line)
            return {"status": ReservationStatus.RELEASED, "undo": kind}
        raise _Race(f"release of {order_id} kept racing")

    async def stock(self) -> list[StockRow]:
        """Every sku's counters (a scan: for audits, tests and the CLI)."""
        ddb = await self._aws.client("dynamodb")
        rows: list[StockRow] = []
        kwargs: dict[str, Any] = {"TableName": self.table}
        while True:
            with aws_errors():
                page = await ddb.scan(**kwargs)
            for raw in page.get("Items", ()):
                item = from_item(raw)
                if item["sk"] == "STOCK":
                    rows.append(StockRow(sku=item["sku"], initial=item["initial"],
                                         available=item["available"], reserved=item["reserved"],
                                         shipped=item["shipped"]))
            if "LastEvaluatedKey" not in page:
                return sorted(rows, key=lambda r: r.sku)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


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


worker = Worker(
    name="orders-inventory",
    source=SqsQueue("InventoryTasksQueue"),
    handler=lambda aws, resources: tasks(aws, table=resources.get("InventoryTable"))
    .batch_handler(),
)
"""`python -m shared.hosts.worker services.orders.inventory:worker` (the ECS service)."""
