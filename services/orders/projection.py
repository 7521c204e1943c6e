"""Read models built from order events (choreography: consumers of the orders bus).

**Order history** (OrderHistoryTable, queue OrderHistoryQueue, events OrderPlaced /
OrderConfirmed / OrderCancelled): what `GET /orders/{id}` and `GET /customers/{id}/orders`
read.

    customer_id (HASH) / order_id (RANGE)   the order as last seen; GSI `by-order` on order_id

One item per order: the customer's list is a Query on the key, one order a Query on the
GSI. Each event carries the whole order (event-carried state), so the item is replaced by
one conditional PutItem that applies only when the event's sequence is newer than the stored
`seq`: a duplicate is refused by the same condition (no inbox item needed), and an
out-of-order pair (Confirmed before Placed) still ends CONFIRMED.

**Sales projection** (SalesProjectionTable, queue SalesProjectionQueue, OrderConfirmed only):
orders, units and revenue per day and sku.

    SALES#<day>  / SKU#<sku>   orders, units, revenue (minor units), currency, seen {event ids}

Each (day, sku) item is its own inbox: one UpdateItem `ADD`s the counts and the event id to
`seen`, on the condition that `seen` does not contain it. So a redelivery is refused item by
item, and a worker that died after counting some skus of an order is completed by the
redelivery without counting the others twice. One write unit per sku, no read, no version,
no transaction, so concurrent orders of one sku never conflict. (A transactional inbox
costs 2 units per item plus the inbox item; the unit of work's versioned in-item inbox would
make every order of a busy sku race for one item.) Bound: `seen` holds one id per confirmed
order of that sku and day, about 10,000 before the 400 KB item limit; a busier shop shards
the item by hour.

This projection was added after the producer existed, with only a rule on the orders bus and
a queue in the template (see docs/orders.md): the saga and the API did not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc

from services.orders._envelopes import OrderEnvelope, decode_order_event
from services.orders.domain import OrderStatus, sales_day, sales_deltas
from services.orders.events import OrderCancelled, OrderConfirmed, OrderPlaced
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import (
    BatchHandler,
    BatchResult,
    DuplicateEvent,
    HandlerContext,
    Message,
    batch_handler,
)
from shared.dynamodb import from_item, to_item
from shared.errors import ConditionFailedError
from shared.hosts import Consumer, SqsQueue, Worker
from shared.tracing import handler_span

__all__ = ["OrderHistory", "Queues", "SalesProjection", "history_view", "worker"]


def history_view(envelope: OrderEnvelope) -> dict[str, Any]:
    """The read-model row for an order event (pure)."""
    data = envelope.data
    row: dict[str, Any] = {
        "order_id": data.order_id,
        "customer_id": data.customer_id,
        "items": [line.model_dump() for line in data.items],
        "currency": data.currency,
        "total": data.total,
        "seq": envelope.sequence,
        "updated_at": envelope.time or datetime.now(UTC).isoformat(),
        "last_event_id": envelope.id,
    }
    if isinstance(data, OrderPlaced):
        row.update(status=OrderStatus.PLACED.value, placed_at=data.placed_at,
                   shipping_country=data.shipping_address.country)
    elif isinstance(data, OrderConfirmed):
        row.update(status=OrderStatus.CONFIRMED.value, placed_at=data.placed_at,
                   confirmed_at=data.confirmed_at, payment_id=data.payment_id,
                   shipment_id=data.shipment_id)
    elif isinstance(data, OrderCancelled):
        row.update(status=OrderStatus.CANCELLED.value, placed_at=data.placed_at,
                   cancelled_at=data.cancelled_at, reason=data.reason, detail=data.detail)
    return {k: v for k, v in row.items() if v is not None}


class OrderHistory:
    def __init__(self, aws: AwsClients, *, table: str) -> None:
        self._aws = aws
        self.table = table

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None) -> OrderHistory:
        return cls(aws, table=(resources or Resources.from_environ()).get("OrderHistoryTable"))

    async def apply(self, envelope: OrderEnvelope) -> bool:
        """Project one event; False when it was not newer (a duplicate or out of order)."""
        row = history_view(envelope)
        ddb = await self._aws.client("dynamodb")
        try:
            with aws_errors():
                await ddb.put_item(
                    TableName=self.table, Item=to_item(row),
                    ConditionExpression="attribute_not_exists(order_id) OR seq < :seq",
                    ExpressionAttributeValues=to_item({":seq": row["seq"]}),
                )
        except ConditionFailedError:
            return False
        return True

    async def handle(self, envelope: OrderEnvelope, ctx: HandlerContext) -> None:
        with handler_span(f"orders.order-history {envelope.type}", source=envelope.trace,
                          attributes={"order.id": envelope.data.order_id}):
            applied = await self.apply(envelope)
        if not applied:
            raise DuplicateEvent(envelope.id)
        ctx.log.info("order history updated", order_id=envelope.data.order_id,
                     type=envelope.type)

    def batch_handler(self) -> BatchHandler:
        return batch_handler(self.handle, decode=decode_order_event)


class SalesProjection:
    def __init__(self, aws: AwsClients, *, table: str) -> None:
        self._aws = aws
        self.table = table

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None
                     ) -> SalesProjection:
        return cls(aws, table=(resources or Resources.from_environ()).get("SalesProjectionTable"))

    async def apply(self, envelope: OrderEnvelope) -> bool:
        """Count a confirmed order once; False for a duplicate. Other events are ignored."""
        data = envelope.data
        if not isinstance(data, OrderConfirmed):
            return True  # cancelled orders sell nothing
        day = sales_day(data.confirmed_at or envelope.time or datetime.now(UTC).isoformat())
        ddb = await self._aws.client("dynamodb")
        counted = False
        for sku, (units, revenue) in sorted(sales_deltas(data.items).items()):
            try:
                with aws_errors():
                    await ddb.update_item(
                        TableName=self.table,
                        Key=to_item({"pk": f"SALES#{day}", "sk": f"SKU#{sku}"}),
                        UpdateExpression="ADD orders :one, units :u, revenue :r, seen :ids "
                                         "SET currency = :c, sku = :sku, #day = :day",
                        ConditionExpression="NOT contains(seen, :id)",
                        ExpressionAttributeNames={"#day": "day"},
                        ExpressionAttributeValues={
                            **to_item({":one": 1, ":u": units, ":r": revenue,
                                              ":c": data.currency, ":sku": sku, ":day": day,
                                              ":id": envelope.id}),
                            ":ids": {"SS": [envelope.id]},
                        },
                    )
            except ConditionFailedError:
                continue  # this sku counted it before (a redelivery after a partial crash)
            counted = True
        return counted

    async def handle(self, envelope: OrderEnvelope, ctx: HandlerContext) -> None:
        with handler_span(f"orders.sales-projection {envelope.type}", source=envelope.trace,
                          attributes={"order.id": envelope.data.order_id}):
            applied = await self.apply(envelope)
        if not applied:
            raise DuplicateEvent(envelope.id)
        ctx.log.info("sales counted", order_id=envelope.data.order_id)

    def batch_handler(self) -> BatchHandler:
        return batch_handler(self.handle, decode=decode_order_event)

    async def day(self, day: str) -> list[dict[str, Any]]:
        """The rows of one day, by sku."""
        ddb = await self._aws.client("dynamodb")
        with aws_errors():
            page = await ddb.query(
                TableName=self.table, KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues=to_item({":pk": f"SALES#{day}"}))
        return [from_item(i) for i in page.get("Items", ())]


@dataclass(frozen=True)
class Queues:
    """A worker source over several SQS queues: one consumer per queue, run together, shut
    down together. The handler sees each message's `source_name` (its queue URL)."""

    queues: tuple[str, ...]

    async def open(self, aws: AwsClients, resources: Resources, handler: BatchHandler, *,
                   name: str, drain_seconds: float) -> Consumer:
        consumers = [await SqsQueue(q).open(aws, resources, handler, name=name,
                                            drain_seconds=drain_seconds)
                     for q in self.queues]
        return _Together(consumers)


class _Together:
    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._consumers = list(consumers)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        async with anyio.create_task_group() as tg:
            for consumer in self._consumers:
                await tg.start(consumer.run)
            task_status.started()

    def stop(self) -> None:
        for consumer in self._consumers:
            consumer.stop()


def _by_queue(aws: AwsClients, resources: Resources) -> BatchHandler:
    """One handler for both read models, dispatching each batch by the queue it came from."""
    history = OrderHistory.from_environ(aws, resources).batch_handler()
    sales = SalesProjection.from_environ(aws, resources).batch_handler()
    sales_queue = resources.get("SalesProjectionQueue")

    async def handle(messages: Sequence[Message]) -> BatchResult:
        is_sales = [m for m in messages if _same_queue(m.source_name, sales_queue)]
        rest = [m for m in messages if not _same_queue(m.source_name, sales_queue)]
        outcomes: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for part, handler in ((is_sales, sales), (rest, history)):
            if part:
                result = await handler(part)
                outcomes.update(result.outcomes)
                reasons.update(result.reasons)
        return BatchResult(outcomes, reasons)

    return handle


def _same_queue(source: str, configured: str) -> bool:
    """Queue URL vs the configured name/URL/ARN: compare the queue names."""
    return source.rstrip("/").rsplit("/", 1)[-1] == configured.rsplit(":", 1)[-1].rsplit(
        "/", 1)[-1]


worker = Worker(
    name="orders-projection",
    source=Queues(("OrderHistoryQueue", "SalesProjectionQueue")),
    handler=_by_queue,
)
"""`python -m shared.hosts.worker services.orders.projection:worker`: both read models in one
ECS service, one consumer per queue."""
