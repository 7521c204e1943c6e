"""The whole orders context in one process, on any endpoint: for integration tests and the
benchmark (`fleetline up` runs the same handlers from the template instead).

`create_stack` makes the resources through the API as the template declares them (tables,
the orders bus with its four rules, task and event queues with DLQs, the state machine from
`saga.build_definition` with the given timings): CloudFormation-made state machines cannot
execute in the emulator, and tests must not depend on a deployment.

`OrdersRuntime` runs every process of the context as tasks of one task group, each
separately stoppable (to kill a worker mid-step): the outbox relay (DynamoDB stream ->
PutEvents), the saga starter, the inventory / payments / shipping task workers, the
notifier, the order history and the sales projection, all on the runtime's consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from services.orders import inventory, payments, shipping
from services.orders.api import OrdersApi
from services.orders.notifications import LogMailer, Mailer, MemoryMailer, Notifier
from services.orders.projection import OrderHistory, SalesProjection
from services.orders.provider import ProviderSettings
from services.orders.saga import SagaTimings, render_definition
from services.orders.saga_starter import SagaStarter
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.consumers import BatchHandler, SqsConsumer, SqsSettings, StreamConsumerConfig
from shared.consumers.dynamodb_streams import DynamoDBStreamsConsumer, latest_stream_arn
from shared.outbox import PublisherConfig, Relay
from shared.testing import KillableTasks, create_queue_with_dlq

__all__ = [
    "TEST_TIMINGS", "OrdersRuntime", "OrdersStack", "background_runtime", "create_stack",
]

# Short enough for tests (a dead worker is noticed in 3 s), long enough for a slow emulator.
TEST_TIMINGS = SagaTimings(
    heartbeat_seconds=3, timeout_seconds=60, retry_interval_seconds=1, retry_max_attempts=4,
    retry_backoff_rate=1.5, compensation_max_attempts=6, publish_retry_wait_seconds=1,
)

_QUEUES = ("SagaStart", "InventoryTasks", "PaymentTasks", "ShippingTasks", "Notifications",
           "OrderHistory", "SalesProjection")
_RULES: Mapping[str, tuple[str, ...]] = {
    "SagaStart": ("OrderPlaced",),
    "Notifications": ("OrderConfirmed", "OrderCancelled"),
    "OrderHistory": ("OrderPlaced", "OrderConfirmed", "OrderCancelled"),
    "SalesProjection": ("OrderConfirmed", "OrderCancelled"),
}


@dataclass(frozen=True, kw_only=True)
class OrdersStack:
    """Names of the resources, by the template's logical names."""

    orders_table: str
    inventory_table: str
    payments_table: str
    history_table: str
    sales_table: str
    idempotency_table: str
    lease_table: str
    bus_name: str
    queues: Mapping[str, str]  # "InventoryTasks" -> URL
    state_machine_arn: str

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "queues": dict(self.queues)})

    @classmethod
    def from_json(cls, text: str) -> OrdersStack:
        return cls(**json.loads(text))

    def resources(self) -> Resources:
        """As the processes see them (`Resources.get("OrdersTable")`)."""
        outputs = {
            "OrdersTable": self.orders_table, "InventoryTable": self.inventory_table,
            "PaymentsTable": self.payments_table, "OrderHistoryTable": self.history_table,
            "SalesProjectionTable": self.sales_table,
            "IdempotencyTable": self.idempotency_table, "OrdersBusName": self.bus_name,
            "OrderSagaStateMachine": self.state_machine_arn,
            **{f"{name}Queue": url for name, url in self.queues.items()},
        }
        return Resources.from_outputs(outputs)


async def _table(aws: AwsClients, name: str, *, keys: tuple[str, ...] = ("pk", "sk"),
                 stream: bool = False, index: tuple[str, str] | None = None) -> None:
    ddb = await aws.client("dynamodb")
    params: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [{"AttributeName": k, "KeyType": t}
                      for k, t in zip(keys, ("HASH", "RANGE"), strict=False)],
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": "S"} for k in keys],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if index is not None:  # (name, partition key): a GSI projecting everything
        index_name, index_key = index
        params["GlobalSecondaryIndexes"] = [{
            "IndexName": index_name,
            "KeySchema": [{"AttributeName": index_key, "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }]
        if index_key not in keys:
            params["AttributeDefinitions"].append({"AttributeName": index_key,
                                                   "AttributeType": "S"})
    if stream:
        params["StreamSpecification"] = {"StreamEnabled": True,
                                         "StreamViewType": "NEW_AND_OLD_IMAGES"}
    with aws_errors():
        await ddb.create_table(**params)


async def create_stack(
    aws: AwsClients, *, prefix: str | None = None, timings: SagaTimings = TEST_TIMINGS,
    task_visibility_seconds: int = 30, max_receive_count: int = 5,
) -> OrdersStack:
    """Create every orders resource through the API (names start with `prefix`)."""
    p = prefix or f"o{uuid.uuid4().hex[:6]}"
    names = {"orders": f"{p}-orders", "inventory": f"{p}-inventory",
             "payments": f"{p}-payments", "history": f"{p}-order-history",
             "sales": f"{p}-sales", "idempotency": f"{p}-idempotency",
             "leases": f"{p}-leases"}
    await _table(aws, names["orders"], stream=True)
    for key in ("inventory", "payments", "sales"):
        await _table(aws, names[key])
    await _table(aws, names["history"], keys=("customer_id", "order_id"),
                 index=("by-order", "order_id"))
    await _table(aws, names["idempotency"], keys=("id",))
    await _table(aws, names["leases"], keys=("lease_key",))

    queues: dict[str, str] = {}
    arns: dict[str, str] = {}
    for name in _QUEUES:
        made = await create_queue_with_dlq(aws, f"{p}-{name}",
                                           max_receive_count=max_receive_count,
                                           visibility_timeout=task_visibility_seconds)
        queues[name], arns[name] = made.url, made.arn

    events = await aws.client("events")
    bus = f"{p}-orders"
    with aws_errors():
        await events.create_event_bus(Name=bus)
        for queue, types in _RULES.items():
            rule = f"{p}-{queue}"
            await events.put_rule(Name=rule, EventBusName=bus, State="ENABLED",
                                  EventPattern=json.dumps({"source": ["fleetline.orders"],
                                                           "detail-type": list(types)}))
            await events.put_targets(Rule=rule, EventBusName=bus,
                                     Targets=[{"Id": queue, "Arn": arns[queue]}])

    definition = render_definition({
        "InventoryTasksQueueUrl": queues["InventoryTasks"],
        "PaymentTasksQueueUrl": queues["PaymentTasks"],
        "ShippingTasksQueueUrl": queues["ShippingTasks"],
        "OrdersTableName": names["orders"],
        "OrdersBusName": bus,
    }, timings)
    sfn = await aws.client("stepfunctions")
    with aws_errors():
        arn = (await sfn.create_state_machine(
            name=f"{p}-order-saga", definition=definition,
            roleArn="arn:aws:iam::123456789012:role/order-saga",
        ))["stateMachineArn"]
    return OrdersStack(
        orders_table=names["orders"], inventory_table=names["inventory"],
        payments_table=names["payments"], history_table=names["history"],
        sales_table=names["sales"], idempotency_table=names["idempotency"],
        lease_table=names["leases"], bus_name=bus, queues=queues, state_machine_arn=arn,
    )


class OrdersRuntime:
    """Runs the orders processes in `task_group`. Each may be killed (cancelled: no drain,
    nothing deleted, heartbeats stop) and started again."""

    PROCESSES = ("relay", "saga-starter", "inventory", "payments", "shipping",
                 "notifications", "order-history", "sales-projection")

    def __init__(
        self, aws: AwsClients, stack: OrdersStack, task_group: anyio.abc.TaskGroup, *,
        provider: ProviderSettings | None = None, mailer: Mailer | None = None,
        wait_time_seconds: int = 1, lease_duration: float = 3.0,
        relay_idle_backoff: float = 0.1,
    ) -> None:
        self.aws = aws
        self.stack = stack
        self.provider = provider or ProviderSettings()
        self.mailer: Mailer = mailer or MemoryMailer()
        self.wait_time_seconds = wait_time_seconds
        self.lease_duration = lease_duration
        self.relay_idle_backoff = relay_idle_backoff
        self._processes = KillableTasks(task_group, self._run)
        self.api = OrdersApi(aws, orders_table=stack.orders_table,
                             history_table=stack.history_table)
        self.consumers: dict[str, Any] = {}

    def _handler(self, name: str) -> tuple[str, BatchHandler]:
        s, aws = self.stack, self.aws
        factories: dict[str, Callable[[], tuple[str, BatchHandler]]] = {
            "saga-starter": lambda: ("SagaStart", SagaStarter(
                aws, state_machine_arn=s.state_machine_arn).batch_handler()),
            "inventory": lambda: ("InventoryTasks", inventory.tasks(
                aws, table=s.inventory_table).batch_handler()),
            "payments": lambda: ("PaymentTasks", payments.tasks(
                aws, table=s.payments_table, settings=self.provider).batch_handler()),
            "shipping": lambda: ("ShippingTasks", shipping.tasks(
                aws, table=s.inventory_table).batch_handler()),
            "notifications": lambda: ("Notifications", Notifier(
                aws, table=s.idempotency_table, mailer=self.mailer,
                lease_seconds=10).batch_handler()),
            "order-history": lambda: ("OrderHistory", OrderHistory(
                aws, table=s.history_table).batch_handler()),
            "sales-projection": lambda: ("SalesProjection", SalesProjection(
                aws, table=s.sales_table).batch_handler()),
        }
        return factories[name]()

    async def _run(self, name: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        if name == "relay":
            arn = await latest_stream_arn(self.aws, self.stack.orders_table)
            relay = Relay(self.aws, PublisherConfig(bus_name=self.stack.bus_name))
            consumer: Any = DynamoDBStreamsConsumer(
                self.aws, relay, stream_arn=arn, config=StreamConsumerConfig(
                    lease_table=self.stack.lease_table, application="orders-relay",
                    lease_duration=self.lease_duration,
                    idle_backoff=self.relay_idle_backoff,
                    shard_sync_interval=2.0, shutdown_grace=1.0))
            self.consumers[name] = consumer
            task_status.started()
            await consumer.run()
        else:
            queue, handler = self._handler(name)
            consumer = SqsConsumer(self.aws, self.stack.queues[queue], handler,
                                   settings=SqsSettings(
                                       wait_time_seconds=self.wait_time_seconds,
                                       drain_seconds=1.0))
            self.consumers[name] = consumer
            await consumer.run(task_status=task_status)

    async def start(self, *names: str) -> None:
        """Start the named processes (all when none are named).

        Raises RuntimeError when one of them is running already."""
        await self._processes.start(*(names or self.PROCESSES))

    async def kill(self, name: str) -> None:
        """Cancel a process at once, like SIGKILL: in-flight messages are neither deleted
        nor released, heartbeats stop."""
        await self._processes.kill(name)

    async def stop(self) -> None:
        """Stop every running process: the SQS consumers drain (0.5 s, then up to 5 s to
        return), the others are killed."""
        draining = set()
        for name in self._processes.running:
            consumer = self.consumers.get(name)
            if isinstance(consumer, SqsConsumer):
                consumer.stop(drain_seconds=0.5)
                draining.add(name)
        for name in self._processes.running:
            await self._processes.kill(name, grace=5.0 if name in draining else 0.0)


@contextlib.asynccontextmanager
async def background_runtime(
    aws: AwsClients, stack: OrdersStack, **options: Any
) -> AsyncIterator[OrdersRuntime]:
    """An `OrdersRuntime` with every process started, owned by a task of its own.

    pytest-asyncio enters and leaves an async fixture in different tasks, and a task group
    must be left by the task that entered it, so the group lives in one dedicated task that
    this context manager starts and stops.
    """
    ready: asyncio.Future[OrdersRuntime] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def owner() -> None:
        async with anyio.create_task_group() as tg:
            runtime = OrdersRuntime(aws, stack, tg, **options)
            try:
                await runtime.start()
            except BaseException as exc:
                ready.set_exception(exc)
                raise
            ready.set_result(runtime)
            await stop.wait()
            await runtime.stop()
            tg.cancel_scope.cancel()

    task = asyncio.create_task(owner())
    try:
        yield await ready
    finally:
        stop.set()
        await task


STACK_ENV = "FLEETLINE_ORDERS_STACK"


def main(argv: list[str]) -> None:
    """`python -m services.orders.harness <process>`: run one orders process of the stack in
    `$FLEETLINE_ORDERS_STACK` (an `OrdersStack` as JSON) until SIGTERM / SIGINT. Tests use it
    to SIGKILL a worker for real (no drain, no release)."""
    if len(argv) != 2 or argv[1] not in OrdersRuntime.PROCESSES:
        names = "|".join(OrdersRuntime.PROCESSES)
        sys.exit(f"usage: python -m services.orders.harness {{{names}}}")
    stack = OrdersStack.from_json(os.environ[STACK_ENV])

    async def run() -> None:
        async with AwsClients() as aws, anyio.create_task_group() as tg:
            runtime = OrdersRuntime(aws, stack, tg, provider=ProviderSettings.from_environ(),
                                    mailer=LogMailer())
            await runtime.start(argv[1])
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            await runtime.stop()
            tg.cancel_scope.cancel()

    anyio.run(run)


if __name__ == "__main__":
    main(sys.argv)
