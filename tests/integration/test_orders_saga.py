"""The order saga end to end on the embedded emulator: API -> outbox -> relay -> bus ->
saga starter -> Step Functions -> task workers -> OrderConfirmed / OrderCancelled -> bus ->
notifications and read models. Everything runs in this process on real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from shared.aws import AwsClients
from tests.integration.orders_support import (
    Orders,
    at_least,
    eventually,
    order_body,
    running_orders,
)

pytestmark = pytest.mark.emulator

@pytest.fixture
async def orders(aws: AwsClients) -> AsyncIterator[Orders]:
    async with running_orders(aws) as running:
        yield running


async def test_happy_path_confirms_once(orders: Orders) -> None:
    status, answer = await orders.post(order_body(), key="k-happy")
    assert status == 202, answer
    order_id = answer["order_id"]
    assert answer["status_url"] == f"/orders/{order_id}"

    final = await orders.final(order_id)
    assert final["status"] == "CONFIRMED", final
    stock = {row.sku: row for row in await orders.inventory.stock()}
    assert (stock["MUG-RED"].available, stock["MUG-RED"].shipped) == (48, 2)
    assert (stock["KETTLE-1"].available, stock["KETTLE-1"].shipped) == (49, 1)
    assert stock["MUG-RED"].reserved == 0
    charges = await orders.charges()
    assert [(c["status"], c["captures"], c["amount"]) for c in charges] == [
        ("CAPTURED", 1, 2 * 899 + 2999)]
    await eventually(lambda: at_least(len(orders.emails), 1), what="the email")
    await anyio.sleep(1.0)  # a second email would arrive in this window
    assert [e.subject for e in orders.emails] == [f"Order {order_id} confirmed"]
    _, listed = await orders.get("/customers/c-1/orders")
    assert [o["order_id"] for o in listed["orders"]] == [order_id]


async def test_payment_declined_compensates(orders: Orders) -> None:
    status, answer = await orders.post(order_body("decline-7"), key="k-decline")
    assert status == 202
    final = await orders.final(answer["order_id"])
    assert final["status"] == "CANCELLED"
    assert final["reason"] == "PaymentDeclined"
    stock = {row.sku: row for row in await orders.inventory.stock()}
    assert (stock["MUG-RED"].available, stock["MUG-RED"].reserved) == (50, 0)
    assert [c["status"] for c in await orders.charges()] == ["DECLINED"]
    await eventually(lambda: at_least(len(orders.emails), 1), what="the email")
    assert "cancelled (PaymentDeclined)" in orders.emails[0].body


async def test_failure_after_authorization_voids_the_hold(orders: Orders) -> None:
    _, answer = await orders.post(order_body(country="AQ"), key="k-aq")
    final = await orders.final(answer["order_id"])
    assert (final["status"], final["reason"]) == ("CANCELLED", "ShippingUnavailable")
    assert [c["status"] for c in await orders.charges()] == ["VOIDED"]
    stock = {row.sku: row for row in await orders.inventory.stock()}
    assert (stock["MUG-RED"].available, stock["MUG-RED"].reserved) == (50, 0)
