"""The saga's services on their own against the emulator: every action repeated is applied
once, and an undo that runs before (or during) its action leaves a tombstone that stops the
late action from taking stock or holding money."""

from __future__ import annotations

import pytest

from services.orders.errors import OutOfStock, PaymentClosed, ReservationClosed, ShipmentClosed
from services.orders.events import OrderLine
from services.orders.harness import create_stack
from services.orders.inventory import Inventory
from services.orders.payments import Payments
from services.orders.provider import PaymentProvider, ProviderSettings
from services.orders.shipping import Shipping
from services.orders.tasks import TaskOrder
from shared.aws import AwsClients

pytestmark = pytest.mark.emulator

LINES = [OrderLine(sku="MUG-RED", quantity=2, unit_price=899),
         OrderLine(sku="KETTLE-1", quantity=1, unit_price=2999)]


def order(order_id: str, customer: str = "c-1") -> TaskOrder:
    return TaskOrder(order_id=order_id, customer_id=customer, items=tuple(LINES),
                     currency="EUR", total=4797)


async def stock(inventory: Inventory) -> dict[str, tuple[int, int, int]]:
    return {r.sku: (r.available, r.reserved, r.shipped) for r in await inventory.stock()}


async def test_inventory_actions_apply_once_and_tombstones_refuse_late_reserves(
        aws: AwsClients) -> None:
    stack = await create_stack(aws)
    inventory = Inventory(aws, table=stack.inventory_table)
    await inventory.seed({"MUG-RED": 5, "KETTLE-1": 1})

    await inventory.reserve("o-1", LINES)
    again = await inventory.reserve("o-1", LINES)
    assert again["repeat"] is True
    assert await stock(inventory) == {"KETTLE-1": (0, 1, 0), "MUG-RED": (3, 2, 0)}
    with pytest.raises(OutOfStock, match="KETTLE-1"):  # nothing left; MUG hold undone
        await inventory.reserve("o-2", LINES)
    assert await stock(inventory) == {"KETTLE-1": (0, 1, 0), "MUG-RED": (3, 2, 0)}

    await inventory.commit("o-1")
    await inventory.commit("o-1")
    assert await stock(inventory) == {"KETTLE-1": (0, 0, 1), "MUG-RED": (3, 0, 2)}
    await inventory.release("o-1")  # released after commit: the stock comes back once
    await inventory.release("o-1")
    assert await stock(inventory) == {"KETTLE-1": (1, 0, 0), "MUG-RED": (5, 0, 0)}

    await inventory.release("o-3")  # the step timed out before the reserve ran
    with pytest.raises(ReservationClosed):
        await inventory.reserve("o-3", LINES)
    assert await stock(inventory) == {"KETTLE-1": (1, 0, 0), "MUG-RED": (5, 0, 0)}


async def test_payments_charge_once_and_a_late_authorization_holds_nothing(
        aws: AwsClients) -> None:
    stack = await create_stack(aws)
    provider = PaymentProvider(aws, table=stack.payments_table, settings=ProviderSettings())
    payments = Payments(aws, table=stack.payments_table, provider=provider)

    first = await payments.authorize(order("o-1"))
    assert (await payments.authorize(order("o-1")))["payment_id"] == first["payment_id"]
    await payments.capture(order("o-1"))
    await payments.capture(order("o-1"))
    await payments.refund(order("o-1"))
    await payments.refund(order("o-1"))

    await payments.refund(order("o-2"))  # compensation first: a tombstone
    with pytest.raises(PaymentClosed):
        await payments.authorize(order("o-2"))

    ledger = {c["idempotency_key"]: c for c in await provider.ledger()}
    assert ledger["authorize:o-1"]["status"] == "REFUNDED"
    assert (ledger["authorize:o-1"]["captures"], ledger["authorize:o-1"]["refunds"]) == (1, 1)
    assert "authorize:o-2" not in ledger  # never reached the provider


async def test_shipping_cancel_first_refuses_the_late_create(aws: AwsClients) -> None:
    stack = await create_stack(aws)
    shipping = Shipping(aws, table=stack.inventory_table)
    created = await shipping.create(order("o-1"))
    assert (await shipping.create(order("o-1")))["shipment_id"] == created["shipment_id"]
    await shipping.cancel(order("o-2"))
    with pytest.raises(ShipmentClosed):
        await shipping.create(order("o-2"))
