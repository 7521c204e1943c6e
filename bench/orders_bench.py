"""Orders benchmark: the whole saga on the embedded stack, and what each order costs.

    .venv/bin/python bench/orders_bench.py [--orders 200] [--decline-rate 0.1]
        [--outage-rate 0.05] [--lost-rate 0.02] [--in-flight 16]

Starts its own emulator (moto server, a separate process), creates the orders resources
through the API (`services.orders.harness`), runs every orders process in this process (the
API handler, the outbox relay, the saga starter, the inventory / payments / shipping task
workers, notifications, both projections), places N orders through the API with random
declines, provider outages and lost answers, at most `--in-flight` sagas at once (a closed
loop: a placer waits for its order to end), checks the saga's invariants (the issue's
200-order mix), and prints:

- orders/s through the whole saga (first placement to last final state), bounded by the
  emulator, which runs every AWS call of every service on one Python process;
- placement-to-confirmed latency p50/p99 (API `placed_at` -> Step Functions `confirmed_at`);
- AWS requests per order by service (from this process's clients, retries included, plus the
  requests Step Functions makes: one SendMessage per task state, one UpdateItem and one
  PutEvents at the end; the polling of this driver is counted apart and excluded);
- DynamoDB write units per order (1 per KB per write, 2 per KB in a transaction);
- Step Functions state transitions per order (states entered, from execution histories);
- worker CPU per order (CPU time of this process, which runs every orders process);
- dollars per thousand orders at the list prices in bench/prices.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio
from rich.console import Console
from rich.table import Table

from bench.prices import PRICES as _LIST
from services.orders.domain import CATALOG, stock_invariant_violations
from services.orders.harness import background_runtime, create_stack
from services.orders.inventory import Inventory
from services.orders.provider import PaymentProvider, ProviderSettings
from services.orders.saga import SagaTimings
from shared.aws import AwsClients, RequestCounter
from shared.emulator import Emulator
from shared.logging import configure_logging

# The project's list prices (bench/prices.py, from ../shared/notes/cost.md), in dollars.
PRICE = {
    "dynamodb_wru": _LIST["dynamodb_wru"],
    "dynamodb_rru": _LIST["dynamodb_rru"],
    "sqs_request": _LIST["sqs_standard_request"],
    "eventbridge_event": _LIST["eventbridge_event"],
    "sfn_transition": _LIST["stepfunctions_transition"],
    "lambda_request": _LIST["lambda_request"],
    "lambda_gb_second": _LIST["lambda_gb_second"],
    "fargate_vcpu_hour": _LIST["fargate_vcpu_hour"],
}

_DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}
_DDB_READS = {"GetItem", "Query", "Scan", "BatchGetItem"}


def body(n: int, rng: random.Random) -> dict[str, Any]:
    skus = rng.sample(sorted(CATALOG), k=rng.randint(1, 3))
    return {
        "customer_id": f"c-{n % 50}",
        "items": [{"sku": s, "quantity": rng.randint(1, 2)} for s in skus],
        "currency": "EUR",
        "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin",
                             "postal_code": "10115",
                             "country": "AQ" if rng.random() < 0.03 else "DE"},
    }


def post(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {"version": "2.0", "rawPath": "/orders",
            "headers": {"content-type": "application/json", "idempotency-key": key},
            "requestContext": {"http": {"method": "POST", "path": "/orders"},
                               "requestId": key},
            "body": json.dumps(payload), "isBase64Encoded": False}


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


async def run(args: argparse.Namespace) -> int:
    # As the workers run in production: JSON logs at INFO (the per-message debug lines off),
    # to stderr so the table stays readable.
    configure_logging(service="orders-bench", level=args.log_level, stream=sys.stderr)
    console = Console()
    rng = random.Random(args.seed)
    emulator = Emulator(log_path=Path("/tmp/orders-bench-moto.log")).start()
    os.environ.update(AWS_ENDPOINT_URL=emulator.endpoint_url, AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1")
    try:
        system_counter = RequestCounter()
        async with AwsClients(counter=system_counter) as aws, AwsClients() as driver:
            # Production-like step timeouts: the tests' 3 s heartbeat is shorter than the time
            # a task waits in a busy emulator's queue, which would time steps out and retry.
            stack = await create_stack(driver, timings=SagaTimings(
                heartbeat_seconds=args.heartbeat, timeout_seconds=max(300, args.heartbeat),
                retry_interval_seconds=1, retry_max_attempts=4, retry_backoff_rate=2.0))
            await Inventory(driver, table=stack.inventory_table).seed(
                {sku: 10_000 for sku in CATALOG})
            provider = ProviderSettings(decline_rate=args.decline_rate,
                                        outage_rate=args.outage_rate,
                                        lost_response_rate=args.lost_rate, seed=args.seed)
            # Longer polls than the tests' (fewer empty receives), still far below the 20 s
            # of production workers, so a step's message is picked up quickly.
            async with background_runtime(aws, stack, provider=provider, lease_duration=10.0,
                                          wait_time_seconds=5,
                                          relay_idle_backoff=0.5) as runtime:
                await anyio.sleep(1.0)  # let every consumer reach its first poll
                system_counter.reset()
                cpu0, wall0 = time.process_time(), time.monotonic()
                # A bounded number of sagas in flight: each placer waits for its order to end
                # before the next order is placed (a closed loop), so the figures are those of
                # a sustainable load, not of a backlog longer than the step heartbeat.
                in_flight = anyio.Semaphore(args.in_flight)
                ids: list[str] = []
                finals: dict[str, dict[str, Any]] = {}

                async def one(n: int) -> None:
                    async with in_flight:
                        answer = await runtime.api(post(body(n, rng), f"bench-{n}"))
                        assert answer["statusCode"] == 202, answer
                        order_id = json.loads(answer["body"])["order_id"]
                        ids.append(order_id)
                        finals[order_id] = await wait_final(
                            driver, stack.history_table, order_id, args.timeout)

                async with anyio.create_task_group() as tg:
                    for n in range(args.orders):
                        tg.start_soon(one, n)
                wall = time.monotonic() - wall0
                cpu = time.process_time() - cpu0
                requests = system_counter.snapshot()
            audit = await audit_run(driver, stack, finals)
            transitions = await state_transitions(driver, stack.state_machine_arn)
            order_item_kb = await order_item_size_kb(driver, stack.orders_table, ids[0])
    finally:
        emulator.stop()

    n = len(finals)
    outcomes = Counter(f["status"] for f in finals.values())
    reasons = Counter(f.get("reason") for f in finals.values() if f["status"] == "CANCELLED")
    latencies = [ts(f["confirmed_at"]) - ts(f["placed_at"]) for f in finals.values()
                 if f["status"] == "CONFIRMED"]
    tasks_entered = transitions["tasks"]
    # Requests Step Functions makes on our behalf, per order: a SendMessage per callback task
    # entered, and MarkConfirmed/MarkCancelled (UpdateItem) + one PutEvents at the end.
    sfn_sqs = tasks_entered
    by_service: Counter[str] = Counter()
    for key, count in requests.items():
        by_service[key.split(".")[0]] += count
    ddb_writes = sum(c for k, c in requests.items()
                     if k.startswith("dynamodb.") and k.split(".")[1] in _DDB_WRITES)
    ddb_tx = sum(c for k, c in requests.items() if k == "dynamodb.TransactWriteItems")
    ddb_reads = sum(c for k, c in requests.items()
                    if k.startswith("dynamodb.") and k.split(".")[1] in _DDB_READS)
    # write units: 1 per write (items <= 1 KB), the order item's size for its put and for the
    # state machine's update of it, 2 per transactional write
    wru = ddb_writes + (order_item_kb - 1) * n + order_item_kb * n + 2 * ddb_tx
    sqs_requests = by_service["sqs"] + sfn_sqs + 5 * n  # + rule deliveries (2 + 3 per order)
    eb_events = requests.get("events.PutEvents", 0) + n  # relay batches + one per saga end
    lambda_requests = 2 * n  # the API call and the saga starter (batches of up to 10: <= 1)
    dollars = {
        "DynamoDB writes": wru * PRICE["dynamodb_wru"],
        "DynamoDB reads": ddb_reads * PRICE["dynamodb_rru"],
        "SQS": sqs_requests * PRICE["sqs_request"],
        "EventBridge": eb_events * PRICE["eventbridge_event"],
        "Step Functions": transitions["total"] * PRICE["sfn_transition"],
        "Lambda": lambda_requests * PRICE["lambda_request"]
        + lambda_requests * 0.128 * 0.05 * PRICE["lambda_gb_second"],
        "Fargate (worker CPU)": cpu / 3600 * PRICE["fargate_vcpu_hour"],
    }

    table = Table(title=f"orders saga: {n} orders on the embedded emulator")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    table.add_row("cancel reasons", ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    table.add_row("invariants", "OK" if not audit else "; ".join(audit)[:200])
    table.add_row("orders/s (whole saga)", f"{n / wall:.2f}")
    table.add_row("placement -> confirmed p50", f"{percentile(latencies, 0.5):.2f} s")
    table.add_row("placement -> confirmed p99", f"{percentile(latencies, 0.99):.2f} s")
    table.add_row("AWS requests / order (our clients)", f"{sum(requests.values()) / n:.1f}")
    for service, count in sorted(by_service.items()):
        table.add_row(f"  {service}", f"{count / n:.1f}")
    table.add_row("  + by Step Functions (SQS, DynamoDB, EventBridge)",
                  f"{(sfn_sqs + 2 * n) / n:.1f}")
    table.add_row("DynamoDB write units / order", f"{wru / n:.1f}")
    table.add_row("Step Functions transitions / order", f"{transitions['total'] / n:.1f}")
    table.add_row("worker CPU / order", f"{cpu / n * 1000:.1f} ms")
    total = sum(dollars.values())
    table.add_row("$ / 1,000 orders", f"{total / n * 1000:.4f}")
    for name, value in dollars.items():
        table.add_row(f"  {name}", f"{value / n * 1000:.4f}")
    table.add_row("wall time", f"{wall:.1f} s")
    console.print(table)
    return 0 if not audit and n == args.orders else 1


async def wait_final(aws: AwsClients, table: str, order_id: str,
                     limit: float) -> dict[str, Any]:
    """The order's read-model row once it is CONFIRMED or CANCELLED (polled every second:
    this driver runs in the measured process, so its polling is part of the CPU figure).

    Raises TimeoutError after `limit` seconds."""
    from shared.dynamodb import from_item

    ddb = await aws.client("dynamodb")
    with anyio.fail_after(limit):
        while True:
            page = await ddb.query(
                TableName=table, IndexName="by-order", KeyConditionExpression="order_id = :id",
                ExpressionAttributeValues={":id": {"S": order_id}}, Limit=1)
            item = from_item(page["Items"][0]) if page.get("Items") else None
            if item and item["status"] in ("CONFIRMED", "CANCELLED"):
                return item
            await anyio.sleep(1.0)


async def audit_run(aws: AwsClients, stack: Any, finals: dict[str, dict[str, Any]]
                    ) -> list[str]:
    problems: list[str] = []
    rows = await Inventory(aws, table=stack.inventory_table).stock()
    problems += stock_invariant_violations(rows)
    problems += [f"{r.sku}: {r.reserved} still reserved" for r in rows if r.reserved]
    charges = await PaymentProvider(aws, table=stack.payments_table,
                                    settings=ProviderSettings()).ledger()
    captured = [c for c in charges if c["status"] == "CAPTURED"]
    confirmed = [f for f in finals.values() if f["status"] == "CONFIRMED"]
    if len(captured) != len(confirmed):
        problems.append(f"{len(captured)} captured charges for {len(confirmed)} confirmed")
    if any(c["captures"] != 1 for c in captured):
        problems.append("a charge was captured more than once")
    if any(c["status"] == "AUTHORIZED" for c in charges):
        problems.append("an authorization hold survived")
    return problems


async def state_transitions(aws: AwsClients, arn: str) -> dict[str, int]:
    sfn = await aws.client("stepfunctions")
    executions: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"stateMachineArn": arn, "maxResults": 1000}
    while True:
        page = await sfn.list_executions(**kwargs)
        executions += page["executions"]
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    total = tasks = 0
    for execution in executions:
        history = await sfn.get_execution_history(executionArn=execution["executionArn"],
                                                  maxResults=1000)
        for event in history["events"]:
            if event["type"].endswith("StateEntered"):
                total += 1
            if event["type"] == "TaskScheduled":
                tasks += 1
    return {"total": total, "tasks": tasks}


async def order_item_size_kb(aws: AwsClients, table: str, order_id: str) -> int:
    ddb = await aws.client("dynamodb")
    item = (await ddb.get_item(TableName=table, Key={"pk": {"S": f"ORDER#{order_id}"},
                                                     "sk": {"S": "ORDER"}}))["Item"]
    size = len(json.dumps(item))  # a close upper bound of DynamoDB's size rule
    return max(1, math.ceil(size / 1024))


def main() -> int:
    # SIGTERM -> SystemExit, so `finally` stops the emulator (a child in its own session)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=16,
                        help="orders in the saga at once (closed loop)")
    parser.add_argument("--decline-rate", type=float, default=0.1)
    parser.add_argument("--outage-rate", type=float, default=0.05)
    parser.add_argument("--lost-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heartbeat", type=int, default=20,
                        help="HeartbeatSeconds of the callback tasks")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
