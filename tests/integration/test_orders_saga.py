"""The order saga end to end on the embedded emulator: API -> outbox -> relay -> bus ->
saga starter -> Step Functions -> task workers -> OrderConfirmed / OrderCancelled -> bus ->
notifications and read models. Everything runs in this process on real clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from services.orders.domain import CATALOG
from services.orders.harness import (
    OrdersRuntime,
    OrdersStack,
    background_runtime,
    create_stack,
)
from services.orders.inventory import Inventory
from services.orders.notifications import MemoryMailer
from services.orders.provider import PaymentProvider, ProviderSettings
from shared.aws import AwsClients

pytestmark = pytest.mark.emulator

STOCK = {sku: 50 for sku in CATALOG}


def order_body(customer: str = "c-1", *, items: list[tuple[str, int]] | None = None,
               country: str = "DE") -> dict[str, Any]:
    return {
        "customer_id": customer,
        "items": [{"sku": s, "quantity": q} for s, q in (items or [("MUG-RED", 2),
                                                                  ("KETTLE-1", 1)])],
        "currency": "EUR",
        "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin",
                             "postal_code": "10115", "country": country},
    }


def post_event(body: Any, key: str | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return {"version": "2.0", "rawPath": "/orders", "headers": headers,
            "requestContext": {"http": {"method": "POST", "path": "/orders"},
                               "requestId": "r-1"},
            "body": body if isinstance(body, str) else json.dumps(body),
            "isBase64Encoded": False}


def get_event(path: str) -> dict[str, Any]:
    return {"version": "2.0", "rawPath": path, "headers": {},
            "requestContext": {"http": {"method": "GET", "path": path}}}


async def eventually(check: Callable[[], Awaitable[Any]], *, within: float = 45.0,
                     what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    with anyio.move_on_after(within):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(0.25)
    pytest.fail(f"timed out after {within}s waiting for {what}")


class Orders:
    """The test's handle on the running context."""

    def __init__(self, aws: AwsClients, stack: OrdersStack, runtime: OrdersRuntime) -> None:
        self.aws, self.stack, self.runtime = aws, stack, runtime
        self.inventory = Inventory(aws, table=stack.inventory_table)
        self.provider = PaymentProvider(aws, table=stack.payments_table,
                                        settings=ProviderSettings())

    async def post(self, body: Any, key: str | None = None) -> tuple[int, dict[str, Any]]:
        answer = await self.runtime.api(post_event(body, key))
        return answer["statusCode"], json.loads(answer["body"])

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        answer = await self.runtime.api(get_event(path))
        return answer["statusCode"], json.loads(answer["body"])

    async def final(self, order_id: str, within: float = 45.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            status, body = await self.get(f"/orders/{order_id}")
            return body if status == 200 and body["status"] in ("CONFIRMED", "CANCELLED") \
                else None
        return dict(await eventually(check, within=within, what=f"order {order_id} final"))

    async def executions(self) -> list[dict[str, Any]]:
        sfn = await self.aws.client("stepfunctions")
        page = await sfn.list_executions(stateMachineArn=self.stack.state_machine_arn)
        return list(page["executions"])

    async def charges(self) -> list[dict[str, Any]]:
        return await self.provider.ledger()

    @property
    def emails(self) -> list[Any]:
        mailer = self.runtime.mailer
        assert isinstance(mailer, MemoryMailer)
        return mailer.sent


@pytest.fixture
async def orders(aws: AwsClients) -> AsyncIterator[Orders]:
    stack = await create_stack(aws)
    await Inventory(aws, table=stack.inventory_table).seed(STOCK)
    async with background_runtime(aws, stack) as runtime:
        yield Orders(aws, stack, runtime)


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
    await eventually(lambda: _true(len(orders.emails) >= 1), what="the email")
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
    await eventually(lambda: _true(len(orders.emails) >= 1), what="the email")
    assert "cancelled (PaymentDeclined)" in orders.emails[0].body


async def test_failure_after_authorization_voids_the_hold(orders: Orders) -> None:
    _, answer = await orders.post(order_body(country="AQ"), key="k-aq")
    final = await orders.final(answer["order_id"])
    assert (final["status"], final["reason"]) == ("CANCELLED", "ShippingUnavailable")
    assert [c["status"] for c in await orders.charges()] == ["VOIDED"]
    stock = {row.sku: row for row in await orders.inventory.stock()}
    assert (stock["MUG-RED"].available, stock["MUG-RED"].reserved) == (50, 0)


async def _true(value: bool) -> bool:
    return value
