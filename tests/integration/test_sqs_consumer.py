"""The SQS consumer against the emulator: DLQ routing with reasons, FIFO groups, the
visibility heartbeat, drain and release, and the requests a batch costs."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest

from shared.aws import AwsClients
from shared.consumers import (
    Backoff,
    BatchResult,
    ConsumerError,
    DeadLetter,
    DeadLetterMode,
    HandlerContext,
    Message,
    Outcome,
    SqsConsumer,
    SqsSettings,
    batch_handler,
)
from shared.consumers.sqs import DEAD_LETTER_ATTRIBUTE
from shared.hosts.lambda_ import LambdaRuntime, sqs_handler
from shared.testing import create_queue_with_dlq

pytestmark = pytest.mark.emulator

FAST = SqsSettings(
    wait_time_seconds=1,
    backoff=Backoff(base=0.1, cap=1.0),
    drain_seconds=5.0,
    heartbeat_interval=0.2,
    extend_when_remaining=1.0,
)


async def make_queue(
    aws: AwsClients,
    name: str,
    *,
    fifo: bool = False,
    max_receive_count: int = 2,
    visibility: int = 2,
) -> tuple[str, str]:
    """A queue with a DLQ and a RedrivePolicy, made through the API: (URL, DLQ URL)."""
    queue = await create_queue_with_dlq(aws, name, fifo=fifo, max_receive_count=max_receive_count,
                                        visibility_timeout=visibility)
    return queue.url, queue.dlq_url


async def send(aws: AwsClients, url: str, bodies: Sequence[str], **extra: Any) -> None:
    sqs = await aws.client("sqs")
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": b, **extra}
                   for i, b in enumerate(bodies[start:start + 10])]
        response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed")


async def drain_queue(aws: AwsClients, url: str, *, wait: int = 1) -> list[dict[str, Any]]:
    """Everything receivable now from `url` (hidden for 30 s afterwards)."""
    sqs = await aws.client("sqs")
    got: list[dict[str, Any]] = []
    while True:
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait, VisibilityTimeout=30,
            MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"],
        )
        batch = response.get("Messages", [])
        if not batch:
            return got
        got.extend(batch)


async def queue_depth(aws: AwsClients, url: str) -> int:
    sqs = await aws.client("sqs")
    attrs = (await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    ))["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], *, within: float,
                   what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await anyio.sleep(0.05)


@asynccontextmanager
async def running_consumer(consumer: SqsConsumer) -> AsyncIterator[SqsConsumer]:
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        try:
            yield consumer
        finally:
            consumer.stop()


async def test_poison_message_reaches_dlq_with_reason_while_others_flow(
    aws: AwsClients,
) -> None:
    url, dlq = await make_queue(aws, "poison", max_receive_count=2)
    handled: list[str] = []
    attempts: dict[str, int] = {}

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        attempts[event["n"]] = attempts.get(event["n"], 0) + 1
        if event["n"] == "poison":
            raise RuntimeError("downstream says no")
        handled.append(event["n"])

    goods = [f"good-{i}" for i in range(6)]
    await send(aws, url, [json.dumps({"n": n}) for n in ["poison", *goods]])
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=FAST,
                           rng=random.Random(7))
    async with running_consumer(consumer):
        await wait_for(lambda: sorted(handled) == goods, within=10, what="good messages")
        dead = []

        async def in_dlq() -> bool:
            dead.extend(await drain_queue(aws, dlq, wait=0))
            return bool(dead)

        await wait_for(in_dlq, within=15, what="the poison message in the DLQ")
    assert attempts["poison"] == 2  # maxReceiveCount receives, then the DLQ
    assert json.loads(dead[0]["Body"]) == {"n": "poison"}
    note = json.loads(dead[0]["MessageAttributes"][DEAD_LETTER_ATTRIBUTE]["StringValue"])
    assert "gave up after 2 receives" in note["reason"]
    assert "RuntimeError: downstream says no" in note["reason"]
    assert note["receive_count"] == 2
    assert await queue_depth(aws, url) == 0
    stats = consumer.statistics()
    assert stats.succeeded == 6
    assert stats.dead_lettered == 1
    assert stats.retried == 1


async def test_redrive_mode_lets_the_queue_move_the_poison_message(aws: AwsClients) -> None:
    url, dlq = await make_queue(aws, "redrive", max_receive_count=2)
    attempts = 0

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("always")

    await send(aws, url, [json.dumps({"n": 1})])
    settings = SqsSettings(wait_time_seconds=1, backoff=Backoff(base=0.1, cap=1.0),
                           dead_letter=DeadLetterMode.REDRIVE)
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=settings)
    dead: list[dict[str, Any]] = []
    async with running_consumer(consumer):

        async def in_dlq() -> bool:
            dead.extend(await drain_queue(aws, dlq, wait=0))
            return bool(dead)

        await wait_for(in_dlq, within=15, what="the redrive to the DLQ")
    assert attempts == 2
    assert json.loads(dead[0]["Body"]) == {"n": 1}


async def test_malformed_json_goes_to_dlq_with_reason_at_once(aws: AwsClients) -> None:
    url, dlq = await make_queue(aws, "malformed", max_receive_count=5)
    handled: list[int] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        handled.append(event["n"])

    await send(aws, url, ['{"n": 1}', "{not json", '{"n": 2}'])
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=FAST)
    dead: list[dict[str, Any]] = []
    async with running_consumer(consumer):

        async def in_dlq() -> bool:
            dead.extend(await drain_queue(aws, dlq, wait=0))
            return bool(dead)

        await wait_for(in_dlq, within=10, what="the malformed message in the DLQ")
        await wait_for(lambda: sorted(handled) == [1, 2], within=10, what="good messages")
    assert dead[0]["Body"] == "{not json"
    note = json.loads(dead[0]["MessageAttributes"][DEAD_LETTER_ATTRIBUTE]["StringValue"])
    assert note["receive_count"] == 1  # no retries for data that can never succeed
    assert "body: not JSON" in note["reason"]
    assert note["queue"] == url


async def test_fifo_keeps_group_order_and_a_failure_stops_only_its_group(
    aws: AwsClients,
) -> None:
    url, _ = await make_queue(aws, "orders", fifo=True, max_receive_count=5)
    sqs = await aws.client("sqs")
    for group in ("A", "B"):
        await sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"g": group, "i": i}),
             "MessageGroupId": group, "MessageDeduplicationId": f"{group}{i}"}
            for i in range(4)
        ])
    order: list[tuple[str, int]] = []
    failed_once = anyio.Event()
    b_done_at: list[float] = []
    a1_retry_at: list[float] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        key = (event["g"], event["i"])
        if key == ("A", 1):
            if not failed_once.is_set():
                failed_once.set()
                raise RuntimeError("first try of A1 fails")
            a1_retry_at.append(time.monotonic())
        order.append(key)
        if event["g"] == "B" and event["i"] == 3:
            b_done_at.append(time.monotonic())

    settings = SqsSettings(wait_time_seconds=1, backoff=Backoff(base=1.0, minimum=1.0, cap=2.0))
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=settings)
    async with running_consumer(consumer):
        await wait_for(lambda: len(order) == 8, within=15, what="all eight messages")
    assert [i for g, i in order if g == "A"] == [0, 1, 2, 3]
    assert [i for g, i in order if g == "B"] == [0, 1, 2, 3]
    # Group B did not wait for group A's retry.
    assert b_done_at[0] < a1_retry_at[0]
    assert consumer.statistics().retried == 1
    assert consumer.statistics().released == 2  # A2 and A3 went back unattempted
    assert await queue_depth(aws, url) == 0


async def test_heartbeat_keeps_a_slow_message_from_being_redelivered(aws: AwsClients) -> None:
    url, _ = await make_queue(aws, "slow", visibility=2, max_receive_count=5)
    calls: list[int] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        calls.append(ctx.receive_count)
        await anyio.sleep(4.5)  # more than twice the visibility timeout

    await send(aws, url, [json.dumps({"n": 1})])
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=FAST)
    async with running_consumer(consumer):
        await wait_for(lambda: consumer.statistics().deleted == 1, within=10,
                       what="the slow message to be deleted")
    assert calls == [1]
    assert consumer.statistics().visibility_extensions >= 2
    assert await queue_depth(aws, url) == 0


async def test_stop_releases_what_cannot_finish_within_the_drain(aws: AwsClients) -> None:
    url, _ = await make_queue(aws, "drain", visibility=30, max_receive_count=5)
    started = anyio.Event()
    finished: list[int] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        if event["n"] == 0:
            started.set()
            await anyio.sleep(60)  # never finishes within the drain
        finished.append(event["n"])

    await send(aws, url, [json.dumps({"n": n}) for n in range(3)])
    settings = SqsSettings(wait_time_seconds=1, drain_seconds=0.5, max_messages=1)
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=settings)
    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        await wait_for(lambda: started.is_set() and len(finished) == 2, within=10,
                       what="the slow message to start and the others to finish")
        consumer.stop()
    assert time.monotonic() - t0 < 10
    # Released with visibility 0: receivable again at once, despite the 30 s timeout.
    again = await drain_queue(aws, url, wait=1)
    assert [json.loads(m["Body"])["n"] for m in again] == [0]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"


async def test_a_batch_of_ten_costs_one_receive_and_one_delete(aws: AwsClients) -> None:
    url, _ = await make_queue(aws, "cost", max_receive_count=5)
    await send(aws, url, [json.dumps({"n": n}) for n in range(10)])
    done = anyio.Event()
    seen: list[int] = []

    async def handler(messages: Sequence[Message]) -> BatchResult:
        seen.extend(len(messages) for _ in [0])
        if sum(seen) >= 10:
            done.set()
        return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})

    consumer = SqsConsumer(aws, url, handler, settings=FAST)
    before = aws.counter.snapshot()
    async with running_consumer(consumer):
        await done.wait()
        await wait_for(lambda: consumer.statistics().deleted == 10, within=5, what="deletes")
        after = aws.counter.snapshot()
    receives = after.get("sqs.ReceiveMessage", 0) - before.get("sqs.ReceiveMessage", 0)
    deletes = after.get("sqs.DeleteMessageBatch", 0) - before.get("sqs.DeleteMessageBatch", 0)
    assert seen == [10]
    assert receives <= 2  # the one that got ten, perhaps a second one already polling
    assert deletes == 1


async def test_lambda_sqs_adapter_backs_off_and_dead_letters_with_reason(
    aws: AwsClients,
) -> None:
    """The same handler behind the Lambda SQS adapter: a transient failure is hidden for
    the backoff delay (not the queue's 30 s timeout), a permanent one goes to the DLQ with
    its reason and is not reported, so the mapping deletes it."""
    url, dlq = await make_queue(aws, "lambda", visibility=30, max_receive_count=5)
    await send(aws, url, [json.dumps({"n": n}) for n in ("ok", "flaky", "poison")])
    sqs = await aws.client("sqs")
    received = (await sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
        MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]))["Messages"]
    assert len(received) == 3
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
           )["Attributes"]["QueueArn"]
    # The event an SQS event source mapping builds from that receive.
    event = {"Records": [
        {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
         "attributes": m["Attributes"], "messageAttributes": {}, "eventSource": "aws:sqs",
         "eventSourceARN": arn, "awsRegion": "us-east-1"}
        for m in received
    ]}

    async def handle(body: dict[str, Any], ctx: HandlerContext) -> None:
        if body["n"] == "flaky":
            raise RuntimeError("try later")
        if body["n"] == "poison":
            raise DeadLetter("never valid")

    runtime = LambdaRuntime()
    try:
        entry = sqs_handler(batch_handler(handle), runtime=runtime,
                            backoff=Backoff(base=1.0, minimum=1.0, cap=1.0))
        answer = await anyio.to_thread.run_sync(entry, event, None)
    finally:
        await anyio.to_thread.run_sync(runtime.close)
    ids = {json.loads(m["Body"])["n"]: m["MessageId"] for m in received}
    assert answer == {"batchItemFailures": [{"itemIdentifier": ids["flaky"]}]}
    dead = await drain_queue(aws, dlq)
    assert [json.loads(m["Body"])["n"] for m in dead] == ["poison"]
    note = json.loads(dead[0]["MessageAttributes"][DEAD_LETTER_ATTRIBUTE]["StringValue"])
    assert note["reason"] == "DeadLetter: never valid"
    # The flaky one reappears after the 1 s backoff, long before the queue's 30 s timeout.
    again: list[dict[str, Any]] = []

    async def flaky_back() -> bool:
        again.extend(await drain_queue(aws, url, wait=1))
        return bool(again)

    await wait_for(flaky_back, within=5, what="the flaky message after its backoff")
    # ("ok" stays hidden for 30 s: deleting it is the event source mapping's job.)
    assert [json.loads(m["Body"])["n"] for m in again] == ["flaky"]


async def test_in_flight_bound_stops_receiving_until_slots_free(aws: AwsClients) -> None:
    url, _ = await make_queue(aws, "bounded", visibility=30, max_receive_count=5)
    await send(aws, url, [json.dumps({"n": n}) for n in range(9)])
    running = 0
    peak = 0
    gate = anyio.Event()
    first_wave = anyio.Event()
    done: list[int] = []

    async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            first_wave.set()
        await gate.wait()
        running -= 1
        done.append(event["n"])

    settings = SqsSettings(wait_time_seconds=1, max_in_flight=3, pollers=2)
    consumer = SqsConsumer(aws, url, batch_handler(handle), settings=settings)
    async with running_consumer(consumer):
        await first_wave.wait()
        receives = consumer.statistics().receive_requests
        await anyio.sleep(1.5)  # pollers must not receive while all three slots are taken
        assert consumer.statistics().receive_requests == receives
        assert consumer.statistics().in_flight == 3
        gate.set()
        await wait_for(lambda: len(done) == 9, within=10, what="all nine messages")
    assert peak == 3


async def test_a_missing_queue_stops_the_consumer_with_a_clear_error(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    url = (await sqs.create_queue(QueueName="vanishing"))["QueueUrl"]

    async def handler(messages: Sequence[Message]) -> BatchResult:
        return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})

    missing = SqsConsumer(aws, url.replace("vanishing", "never-made"), handler, settings=FAST)
    with pytest.raises(ConsumerError, match="never-made"):
        await missing.run()
    consumer = SqsConsumer(aws, url, handler, settings=FAST)

    async def delete_while_polling() -> None:
        await wait_for(lambda: consumer.statistics().receive_requests > 0, within=5,
                       what="the first receive")
        await sqs.delete_queue(QueueUrl=url)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(delete_while_polling)
            with pytest.raises(ConsumerError, match="vanishing"):
                await consumer.run()
    with pytest.raises(RuntimeError, match="once"):
        await consumer.run()
