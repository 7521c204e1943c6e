"""`fleetline demo` step for orders (entry point `fleetline.demo: orders`): seed the stock
when it is empty, place one order that confirms and one whose card is declined, through the
local HTTP API, and report how each ended. The step fails (`DemoStepFailed`) when there is no
API, a POST is refused, or an order does not end as it should (CONFIRMED, CANCELLED for the
declined card) within `WITHIN_S`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import anyio

from services.orders.domain import CATALOG
from services.orders.inventory import Inventory
from shared.local import DemoStepFailed

__all__ = ["DEFAULT_STOCK", "WITHIN_S", "step"]

DEFAULT_STOCK = 100
WITHIN_S = 60.0
EXPECTED = {"c-demo": "CONFIRMED", "decline-demo": "CANCELLED"}


def _call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
          ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _order(customer: str) -> dict[str, Any]:
    return {"customer_id": customer, "items": [{"sku": "MUG-RED", "quantity": 2},
                                               {"sku": "KETTLE-1", "quantity": 1}],
            "currency": "EUR",
            "shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St",
                                 "city": "Berlin", "postal_code": "10115", "country": "DE"}}


async def step(ctx: Any) -> list[str]:
    """The demo step (a `shared.local.DemoStep`)."""
    lines: list[str] = []
    inventory = Inventory(ctx.aws, table=ctx.outputs["InventoryTable"])
    if not await inventory.stock():
        await inventory.seed({sku: DEFAULT_STOCK for sku in CATALOG})
        lines.append(f"seeded {DEFAULT_STOCK} of each of {len(CATALOG)} skus")
    api = next((url for name, url in ctx.state.urls.items() if "api" in name.lower()), None)
    if api is None:
        raise DemoStepFailed("the orders HTTP API among the running processes",
                             f"only {sorted(ctx.state.urls) or 'none'}")
    placed: dict[str, str] = {}
    for customer in EXPECTED:
        status, answer = await anyio.to_thread.run_sync(
            _call, "POST", f"{api.rstrip('/')}/orders", _order(customer),
            {"idempotency-key": uuid.uuid4().hex})
        if status != 202:
            raise DemoStepFailed(f"202 to POST /orders for {customer}", f"{status} {answer}")
        placed[answer["order_id"]] = customer
        lines.append(f"placed {answer['order_id']} for {customer}: 202")
    deadline = time.monotonic() + WITHIN_S
    pending = set(placed)
    ended: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for order_id in sorted(pending):
            status, answer = await anyio.to_thread.run_sync(
                _call, "GET", f"{api.rstrip('/')}/orders/{order_id}")
            if status == 200 and answer.get("status") in ("CONFIRMED", "CANCELLED"):
                pending.discard(order_id)
                ended[placed[order_id]] = answer["status"]
                reason = f" ({answer.get('reason')})" if answer.get("reason") else ""
                lines.append(f"{order_id} ({placed[order_id]}): {answer['status']}{reason}")
        await anyio.sleep(0.5)
    if pending or ended != EXPECTED:
        raise DemoStepFailed(
            f"orders ending {EXPECTED} within {WITHIN_S:.0f} s",
            f"{ended or 'none ended'}" + (f", still open: {sorted(pending)}" if pending else ""))
    lines.append("see one with: fleetline orders show <order_id>")
    return lines
