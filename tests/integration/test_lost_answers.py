"""Answers lost after the write (`shared.testing.LossyProxy` in front of the emulator): the
SDK retries, the retry meets the effect of its own first attempt, and still every effect
happens exactly once. Faults before the write (nothing applied) must keep holding too."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import anyio
import pytest

from services.orders.harness import TEST_TIMINGS, background_runtime, create_stack
from services.orders.inventory import Inventory
from shared.aws import AwsClients, ClientSettings
from shared.emulator import Emulator
from shared.idempotency import Idempotency, IdempotencyConfig
from shared.testing import LossyProxy
from tests.integration.orders_support import STOCK, Orders, order_body

pytestmark = pytest.mark.emulator


async def _idempotency_table(aws: AwsClients) -> str:
    dynamodb = await aws.client("dynamodb")
    await dynamodb.create_table(
        TableName="idem", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return "idem"


def _lossy(proxy: LossyProxy) -> AwsClients:
    # Enough attempts that the SDK's own retries get through 20 % losses.
    return AwsClients(ClientSettings(endpoint_url=proxy.url, max_attempts=8))


async def test_idempotency_claims_completes_and_releases_through_lost_answers(
    aws: AwsClients, emulator: Emulator
) -> None:
    config = IdempotencyConfig(table=await _idempotency_table(aws), namespace="mail")
    runs: Counter[str] = Counter()

    async def effect(key: str) -> dict[str, str]:
        runs[key] += 1
        return {"sent": key}

    async def failing(key: str) -> dict[str, str]:
        runs[f"fail-{key}"] += 1
        raise RuntimeError("provider down")

    with LossyProxy(emulator.endpoint_url, lose_after=0.2, seed=3) as proxy:
        async with _lossy(proxy) as lossy:
            guard = Idempotency(lossy, config)
            keys = [f"k-{n}" for n in range(30)]
            results = [await guard.run({"k": key}, lambda k=key: effect(k), key="k")
                       for key in keys]
            # a failed effect releases its key even when the delete's answer is lost
            for key in keys[:10]:
                with pytest.raises(RuntimeError):
                    await guard.run({"k": f"x{key}"}, lambda k=key: failing(k), key="k")
            again = [await guard.run({"k": key}, lambda k=key: effect(k), key="k")
                     for key in keys]
        lost = proxy.statistics()
    assert lost.lost_by_operation.get("PutItem", 0) > 0, lost
    assert lost.lost_by_operation.get("UpdateItem", 0) > 0, lost
    assert results == again == [{"sent": key} for key in keys]
    assert runs == Counter({**{key: 1 for key in keys},
                            **{f"fail-{key}": 1 for key in keys[:10]}})
    dynamodb = await aws.client("dynamodb")
    left = (await dynamodb.scan(TableName="idem"))["Items"]
    assert {item["status"]["S"] for item in left} == {"COMPLETED"}, left
    assert len(left) == len(keys)


@pytest.mark.parametrize(("lose_after", "fail_before"), [(0.05, 0.0), (0.0, 0.2)])
async def test_orders_effects_happen_once_when_answers_are_lost(
    aws: AwsClients, emulator: Emulator, lose_after: float, fail_before: float
) -> None:
    with LossyProxy(emulator.endpoint_url, lose_after=lose_after, fail_before=fail_before,
                    seed=5) as proxy:
        # Set up without faults; the runtime runs through them. A heartbeat the SDK retries
        # through the faults (backoff with jitter) can outlast TEST_TIMINGS' 3 s heartbeat
        # timeout on a loaded machine and cancel the order: 10 s keeps the test about lost
        # answers, not about how fast the SDK's backoff is.
        stack = await create_stack(aws, timings=replace(TEST_TIMINGS, heartbeat_seconds=10))
        await Inventory(aws, table=stack.inventory_table).seed(STOCK)
        async with _lossy(proxy) as lossy, background_runtime(lossy, stack) as runtime:
            o = Orders(lossy, stack, runtime)
            ids: list[str] = []

            async def place(n: int) -> None:
                status, answer = await o.post(order_body(f"c-{n}"), key=f"lost-{n}")
                assert status == 202, answer
                ids.append(answer["order_id"])

            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(place, n)
            finals = {order_id: await o.final(order_id, within=120) for order_id in ids}
            emails: Counter[Any] = Counter()
            # A receive whose answer was lost hides its message for the queue's visibility
            # timeout (30 s) before it comes again: wait past two of those.
            with anyio.move_on_after(75):
                while True:  # the confirmation email follows the CONFIRMED status
                    emails = Counter(mail.subject.split()[1] for mail in o.emails)
                    if len(emails) >= len(finals):
                        break
                    await anyio.sleep(0.25)
        statistics = proxy.statistics()
    assert statistics.lost_after + statistics.failed_before > 0, statistics
    assert Counter(f["status"] for f in finals.values()) == {"CONFIRMED": 10}
    assert emails == Counter({order_id: 1 for order_id in ids}), emails
    charges = await Orders(aws, stack, runtime).charges()
    captured = [c for c in charges if c["status"] == "CAPTURED"]
    assert len(captured) == len(ids), charges
    assert all(c["captures"] == 1 for c in captured), charges
    sqs = await aws.client("sqs")
    for name, url in o.stack.queues.items():
        dlq = url + "-dlq"
        depth = (await sqs.get_queue_attributes(
            QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"]))["Attributes"]
        assert depth["ApproximateNumberOfMessages"] == "0", name
