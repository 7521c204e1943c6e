"""Idempotency against the emulator: one effect per key, stored results, fencing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from shared.aws import AwsClients
from shared.idempotency import (
    Idempotency,
    IdempotencyConfig,
    IdempotencyInProgressError,
    IdempotencyKeyReuseError,
    IdempotencyLeaseLostError,
    idempotent,
)

pytestmark = pytest.mark.emulator


async def _table(aws: AwsClients, name: str = "idem") -> str:
    dynamodb = await aws.client("dynamodb")
    await dynamodb.create_table(
        TableName=name, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


async def test_two_workers_race_exactly_one_runs_the_effect(aws: AwsClients) -> None:
    config = IdempotencyConfig(table=await _table(aws), namespace="pay", lease=5.0)
    runs: list[str] = []
    started = anyio.Event()

    async def charge(worker: str) -> dict[str, Any]:
        runs.append(worker)
        started.set()
        await anyio.sleep(0.5)
        return {"receipt": f"r-{worker}"}

    results: dict[str, object] = {}
    request = {"order_id": "o-1", "amount": 10}

    async def worker(name: str) -> None:
        # Each worker has its own clients, as two processes would.
        async with AwsClients() as own:
            guard = Idempotency(own, config)
            try:
                results[name] = await guard.run(request, lambda: charge(name), key="order_id")
            except IdempotencyInProgressError as exc:
                results[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "a")
        tg.start_soon(worker, "b")
    assert len(runs) == 1
    winner = runs[0]
    loser = "b" if winner == "a" else "a"
    assert results[winner] == {"receipt": f"r-{winner}"}
    assert isinstance(results[loser], IdempotencyInProgressError)
    assert results[loser].retryable  # type: ignore[union-attr]
    # Afterwards, a repeat gets the stored result without running the effect.
    again = await Idempotency(aws, config).run(request, lambda: charge("c"), key="order_id")
    assert again == {"receipt": f"r-{winner}"}
    assert runs == [winner]


async def test_same_key_other_payload_is_refused(aws: AwsClients) -> None:
    config = IdempotencyConfig(table=await _table(aws), namespace="pay")
    guard = Idempotency(aws, config)

    async def effect() -> int:
        return 1

    assert await guard.run({"order_id": "o-1", "amount": 10}, effect, key="order_id") == 1
    with pytest.raises(IdempotencyKeyReuseError, match="o-1"):
        await guard.run({"order_id": "o-1", "amount": 99}, effect, key="order_id")


async def test_expired_holder_is_fenced_out(aws: AwsClients) -> None:
    # A holder that stalls (its heartbeat comes after the lease ran out) loses the key to a
    # second caller; its completion write is refused because its owner token changed.
    stalled = IdempotencyConfig(table=await _table(aws), namespace="mail", lease=0.3,
                                heartbeat_interval=5.0)
    request = {"msg": "m-1"}
    second_done = anyio.Event()
    first_started = anyio.Event()
    runs: list[str] = []

    async def slow_send() -> str:
        runs.append("first")
        first_started.set()
        await second_done.wait()
        return "first"

    async def fast_send() -> str:
        runs.append("second")
        return "second"

    outcome: dict[str, object] = {}

    async def first() -> None:
        try:
            outcome["first"] = await Idempotency(aws, stalled).run(request, slow_send, key="msg")
        except IdempotencyLeaseLostError as exc:
            outcome["first"] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        with anyio.fail_after(5):
            await first_started.wait()
        with pytest.raises(IdempotencyInProgressError):
            await Idempotency(aws, stalled).run(request, fast_send, key="msg")
        await anyio.sleep(0.4)  # past the 0.3 s lease: the key may be taken over now
        outcome["second"] = await Idempotency(aws, stalled).run(request, fast_send, key="msg")
        second_done.set()
    assert runs == ["first", "second"]
    assert outcome["second"] == "second"
    assert isinstance(outcome["first"], IdempotencyLeaseLostError)
    repeat = await Idempotency(aws, stalled).run(request, fast_send, key="msg")
    assert repeat == "second"


async def test_heartbeat_keeps_a_long_effect_leased(aws: AwsClients) -> None:
    config = IdempotencyConfig(table=await _table(aws), namespace="long", lease=0.4,
                               heartbeat_interval=0.1)
    release = anyio.Event()

    @idempotent(config, key="id", aws=aws)
    async def effect(request: dict[str, str]) -> str:
        await release.wait()
        return "done"

    async with anyio.create_task_group() as tg:
        tg.start_soon(effect, {"id": "x"})
        await anyio.sleep(1.0)  # more than twice the lease: only the heartbeat keeps it
        with pytest.raises(IdempotencyInProgressError):
            await effect({"id": "x"})
        release.set()
    assert await effect({"id": "x"}) == "done"


async def test_failed_effect_releases_the_key(aws: AwsClients) -> None:
    config = IdempotencyConfig(table=await _table(aws), namespace="fail")
    guard = Idempotency(aws, config)
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("provider down")
        return "ok"

    with pytest.raises(RuntimeError):
        await guard.run({"k": "1"}, flaky, key="k")
    assert await guard.run({"k": "1"}, flaky, key="k") == "ok"
    assert len(calls) == 2


async def test_lambda_handler_decorator_runs_once(aws: AwsClients) -> None:
    from shared.idempotency import idempotent_handler

    config = IdempotencyConfig(table=await _table(aws), namespace="lambda")
    calls: list[str] = []

    @idempotent_handler(config, key="body.order_id")
    async def handler(event: dict[str, Any], context: object) -> dict[str, str]:
        calls.append(event["body"]["order_id"])
        return {"status": "charged"}

    event = {"body": {"order_id": "o-9", "amount": 5}}
    # A Lambda entry point is synchronous: call it from a worker thread, as the runtime would.
    first = await anyio.to_thread.run_sync(handler, event, None)
    second = await anyio.to_thread.run_sync(handler, event, None)
    assert first == second == {"status": "charged"}
    assert calls == ["o-9"]
