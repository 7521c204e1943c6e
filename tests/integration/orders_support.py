"""Helpers shared by the orders integration tests: request events, polling with a deadline,
and `Orders`, the tests' handle on a running orders context."""

from __future__ import annotations

import contextlib
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


@contextlib.asynccontextmanager
async def running_orders(aws: AwsClients, *, stock: dict[str, int] | None = None,
                         **options: Any) -> AsyncIterator[Orders]:
    """A fresh orders stack with seeded stock and every process running."""
    stack = await create_stack(aws)
    await Inventory(aws, table=stack.inventory_table).seed(stock or STOCK)
    async with background_runtime(aws, stack, **options) as runtime:
        yield Orders(aws, stack, runtime)


async def at_least(value: int, minimum: int) -> bool:
    return value >= minimum


