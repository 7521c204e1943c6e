"""The orders edge and the saga's duplicate protection, end to end on the emulator:
validation (400 naming every field, 413), Idempotency-Key (one order; 422 on a different
body), a duplicate OrderPlaced starting no second saga, and a payments worker killed in the
middle of a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
import pytest

from services.orders.api import api_routes
from services.orders.harness import STACK_ENV, background_runtime, create_stack
from services.orders.inventory import Inventory
from services.orders.requests import MAX_BODY_BYTES
from shared.aws import AwsClients
from shared.hosts.lambda_ import LambdaRuntime, http_api_handler
from shared.local._lambda import LambdaContext
from tests.integration.orders_support import (
    STOCK,
    Orders,
    at_least,
    eventually,
    order_body,
    post_event,
    running_orders,
)

pytestmark = pytest.mark.emulator


@pytest.fixture
async def orders(aws: AwsClients) -> AsyncIterator[Orders]:
    async with running_orders(aws) as running:
        yield running


async def test_bad_requests_name_every_field_and_write_nothing(orders: Orders) -> None:
    bad = {**order_body(), "currency": "XXX", "items": [{"sku": "NOPE", "quantity": -1}]}
    status, body = await orders.post(bad, key="k-bad")
    assert status == 400
    assert {e["field"] for e in body["errors"]} == {"currency", "items[0].sku",
                                                    "items[0].quantity"}
    status, body = await orders.post("x" * 20_000, key="k-big")
    assert status == 413
    status, body = await orders.post(order_body(), key="bad key with spaces")
    assert status == 400
    assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]
    # no key: refused (a client's retry would otherwise place a second order)
    status, body = await orders.post(order_body())
    assert status == 400
    assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]
    assert "required" in body["errors"][0]["message"]
    ddb = await orders.aws.client("dynamodb")
    assert (await ddb.scan(TableName=orders.stack.orders_table))["Count"] == 0


async def test_same_idempotency_key_gives_one_order(orders: Orders) -> None:
    first = await orders.post(order_body(), key="k-same")
    again = await orders.post(order_body(), key="k-same")
    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    conflict = await orders.post(order_body(items=[("MUG-BLUE", 1)]), key="k-same")
    assert conflict[0] == 422
    assert conflict[1]["order_id"] == first[1]["order_id"]
    order_id = first[1]["order_id"]
    assert (await orders.final(order_id))["status"] == "CONFIRMED"
    ddb = await orders.aws.client("dynamodb")
    assert (await ddb.scan(TableName=orders.stack.orders_table))["Count"] == 1
    assert [e["name"] for e in await orders.executions()] == [order_id]
    stock = {row.sku: row for row in await orders.inventory.stock()}
    assert stock["MUG-RED"].shipped == 2  # decremented once
    assert stock["MUG-BLUE"].shipped == 0


async def test_duplicate_order_placed_starts_one_saga(orders: Orders) -> None:
    _, answer = await orders.post(order_body(), key="k-dup")
    order_id = answer["order_id"]
    assert (await orders.final(order_id))["status"] == "CONFIRMED"
    # Redeliver the very same OrderPlaced envelope (what a relay restart or a replay does),
    # twice, through the bus the relay publishes to.
    ddb = await orders.aws.client("dynamodb")
    item = (await ddb.get_item(TableName=orders.stack.orders_table,
                               Key={"pk": {"S": f"ORDER#{order_id}"}, "sk": {"S": "ORDER"}}))
    envelope = json.loads(item["Item"]["outbox"]["L"][0]["S"])
    events = await orders.aws.client("events")
    for _ in range(2):
        await events.put_events(Entries=[{
            "EventBusName": orders.stack.bus_name, "Source": envelope["source"],
            "DetailType": envelope["type"], "Detail": json.dumps(envelope)}])
    starter = orders.runtime.consumers["saga-starter"]
    await eventually(lambda: at_least(starter.statistics().duplicates, 2),
                     what="both duplicates skipped")
    assert [e["name"] for e in await orders.executions()] == [order_id]
    assert len(await orders.charges()) == 1
    await anyio.sleep(1.0)
    assert len(orders.emails) == 1


async def test_worker_killed_mid_step_retries_and_charges_once(aws: AwsClients) -> None:
    # Every process runs here except payments, which runs as a child process that is then
    # SIGKILLed: no drain, no release, no more heartbeats. Each provider call takes 3 s:
    # 1.5 s out, the effect, 1.5 s back; the worker dies on the way back, after the provider
    # authorized and before the state machine heard of it.
    stack = await create_stack(aws)
    await Inventory(aws, table=stack.inventory_table).seed(STOCK)
    env = {**os.environ, STACK_ENV: stack.to_json(), "FLEETLINE_PSP_LATENCY_MS": "3000"}
    child = await anyio.open_process(
        [sys.executable, "-m", "services.orders.harness", "payments"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with background_runtime(aws, stack) as runtime:
            await runtime.kill("payments")  # the child does the payments work at first
            o = Orders(aws, stack, runtime)
            _, answer = await o.post(order_body(), key="k-kill")
            order_id = answer["order_id"]

            async def authorized() -> bool:
                return any(c["status"] == "AUTHORIZED" for c in await o.charges())

            await eventually(authorized, what="the provider's authorization")
            child.kill()
            await child.wait()
            await runtime.start("payments")  # a replacement worker, here

            final = await o.final(order_id, within=60)
            assert final["status"] == "CONFIRMED", final
            charges = await o.charges()
            assert [(c["status"], c["captures"]) for c in charges] == [("CAPTURED", 1)]
            sfn = await aws.client("stepfunctions")
            execution = (await o.executions())[0]["executionArn"]
            history = await sfn.get_execution_history(executionArn=execution, maxResults=1000)
            types = [e["type"] for e in history["events"]]
            assert "TaskTimedOut" in types, "the killed step should time out on its heartbeat"
            stock = {row.sku: row for row in await o.inventory.stock()}
            assert stock["MUG-RED"].shipped == 2
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_lambda_entry_point_runs_the_api_unchanged(orders: Orders) -> None:
    runtime = LambdaRuntime(resources=orders.stack.resources())
    handler = http_api_handler(setup=api_routes, runtime=runtime, max_body_bytes=MAX_BODY_BYTES)
    context = LambdaContext(function_name="orders-api", timeout_s=30)
    event = {**post_event(order_body("c-lambda"), "k-lambda"), "routeKey": "POST /orders"}
    try:
        answer = await anyio.to_thread.run_sync(handler, event, context)
        too_big = await anyio.to_thread.run_sync(
            handler, {**event, "body": "x" * (MAX_BODY_BYTES + 1)}, context)
    finally:
        await anyio.to_thread.run_sync(runtime.close)
    assert answer["statusCode"] == 202, answer
    assert too_big["statusCode"] == 413
    order_id = json.loads(answer["body"])["order_id"]
    assert (await orders.final(order_id))["status"] == "CONFIRMED"
