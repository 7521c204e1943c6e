"""ECS task scale-in protection (shared.hosts._protection) against a small HTTP server on
loopback standing in for the ECS agent's endpoint ($ECS_AGENT_URI/task-protection/v1/state):
taken before the first batch of a busy spell, one request however many batches, renewed while
busy, released when idle; failures logged and the work done anyway; and `serve` holding it
on a real SQS worker when ECS_AGENT_URI is set."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog.testing
from aiohttp import web

from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import BatchResult, Message, Outcome, SqsSettings
from shared.hosts import SqsQueue, Worker, serve
from shared.hosts._protection import AGENT_URI_ENV, ScaleInProtection
from tests.integration.test_sqs_consumer import make_queue, send


@dataclass
class Agent:
    """What the stand-in agent received, and how it answers."""

    uri: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    answer: dict[str, Any] = field(default_factory=lambda: {"protection": {
        "ProtectionEnabled": True, "TaskArn": "arn:aws:ecs:eu-west-1:123456789012:task/c/t"}})
    changed: anyio.Event = field(default_factory=anyio.Event)
    release_gate: anyio.Event | None = None  # when set, a release is answered once it is set

    @property
    def enabled(self) -> list[bool]:
        return [bool(b["ProtectionEnabled"]) for b in self.bodies]

    async def wait_for(self, count: int, within: float = 10) -> None:
        with anyio.fail_after(within):
            while len(self.bodies) < count:
                await self.changed.wait()
                self.changed = anyio.Event()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    state = Agent()

    async def state_handler(request: web.Request) -> web.Response:
        assert request.method == "PUT"
        state.bodies.append(await request.json())
        state.changed.set()
        if state.release_gate is not None and not state.bodies[-1]["ProtectionEnabled"]:
            await state.release_gate.wait()
        return web.json_response(state.answer, status=state.status)

    app = web.Application()
    app.router.add_route("*", "/api/task-id/task-protection/v1/state", state_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.uri = f"http://127.0.0.1:{port}/api/task-id"
    try:
        yield state
    finally:
        await runner.cleanup()


def succeed(seen: list[bool], protection: ScaleInProtection) -> Any:
    async def handler(messages: Sequence[Message]) -> BatchResult:
        seen.append(protection.held)  # protection is already held when a batch is handled
        await anyio.lowlevel.checkpoint()
        return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})
    return handler


async def test_one_request_for_a_busy_spell_released_when_idle_taken_again(agent: Agent) -> None:
    protection = ScaleInProtection(agent.uri, release_after=0.3)
    held_when_handled: list[bool] = []
    guarded = protection.guard(succeed(held_when_handled, protection))
    async with anyio.create_task_group() as tg:
        tg.start_soon(protection.run)
        for _ in range(20):
            await guarded([])
        async with anyio.create_task_group() as together:  # batches starting at once
            for _ in range(5):
                together.start_soon(guarded, [])
        assert agent.bodies == [{"ProtectionEnabled": True, "ExpiresInMinutes": 10}]
        await agent.wait_for(2)  # idle for release_after: released
        assert agent.bodies[1] == {"ProtectionEnabled": False}
        with anyio.fail_after(5):  # the agent's answer reaches the worker
            while protection.held:  # noqa: ASYNC110 - no event to wait for in its state
                await anyio.sleep(0.01)
        await guarded([])
        assert agent.enabled == [True, False, True]
        tg.cancel_scope.cancel()
    assert held_when_handled == [True] * 26
    assert protection.requests == 3


async def test_renewed_while_a_batch_keeps_the_worker_busy(agent: Agent) -> None:
    protection = ScaleInProtection(agent.uri, expires_minutes=1, renew_after=0.2,
                                   release_after=0.2)

    async def long_batch(messages: Sequence[Message]) -> BatchResult:
        await agent.wait_for(3)  # taken, then renewed twice while this batch runs
        return BatchResult({})

    async with anyio.create_task_group() as tg:
        tg.start_soon(protection.run)
        await protection.guard(long_batch)([])
        await agent.wait_for(4)
        tg.cancel_scope.cancel()
    assert agent.bodies[:3] == [{"ProtectionEnabled": True, "ExpiresInMinutes": 1}] * 3
    assert agent.bodies[3] == {"ProtectionEnabled": False}


async def test_a_batch_that_begins_while_protection_is_released_takes_it_again(
    agent: Agent,
) -> None:
    protection = ScaleInProtection(agent.uri, release_after=0.1)
    agent.release_gate = anyio.Event()
    finish = anyio.Event()

    async def long_batch(messages: Sequence[Message]) -> BatchResult:
        await finish.wait()
        return BatchResult({})

    guarded = protection.guard(long_batch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(protection.run)
        finish.set()
        await guarded([])
        await agent.wait_for(2)  # the release is under way, not answered yet
        finish = anyio.Event()
        tg.start_soon(guarded, [])  # still "held" as the worker sees it: no request of its own
        agent.release_gate.set()
        await agent.wait_for(3)  # the loop takes it again for the batch in flight
        finish.set()
        tg.cancel_scope.cancel()
    assert agent.enabled == [True, False, True]


@pytest.mark.parametrize("failure", ["status", "failure-body", "unreachable"])
async def test_a_failing_agent_is_logged_and_the_work_goes_on(agent: Agent, failure: str) -> None:
    uri = agent.uri
    if failure == "status":
        agent.status, agent.answer = 500, {"error": {"Code": "ServerException"}}
    elif failure == "failure-body":
        agent.answer = {"failure": {"Reason": "TASK_NOT_VALID"}}
    else:
        uri = "http://127.0.0.1:9/api/task-id"  # the discard port: nothing listens
    protection = ScaleInProtection(uri, retry_after=60, timeout=2)
    handled: list[bool] = []
    with structlog.testing.capture_logs() as logs:
        guarded = protection.guard(succeed(handled, protection))
        results = [await guarded([]) for _ in range(10)]
    assert results == [BatchResult({})] * 10  # every batch handled
    assert len(handled) == 10
    assert protection.requests == 1  # not a request per batch while the agent fails
    assert not protection.held
    warnings = [e for e in logs if e["event"] == "scale-in protection request failed"]
    assert len(warnings) == 1
    assert warnings[0]["retry_in_seconds"] == 60


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"agent_uri": ""}, "agent_uri"), ({"expires_minutes": 0}, "expires_minutes"),
    ({"expires_minutes": 2881}, "expires_minutes"), ({"renew_after": 600}, "renew_after"),
    ({"release_after": -1}, "release_after"),
])
def test_settings_out_of_range_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"agent_uri": "http://127.0.0.1:1", **kwargs}
    with pytest.raises(ValueError, match=message):
        ScaleInProtection(**arguments)


@pytest.mark.emulator
async def test_serve_holds_protection_while_a_batch_is_in_flight_on_ecs(
    aws: AwsClients, agent: Agent, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve` with ECS_AGENT_URI set (as the ECS agent sets it): protection is taken before
    the SQS worker's first batch is handled, and not again for the batches that follow."""
    monkeypatch.setenv(AGENT_URI_ENV, agent.uri)
    url, _ = await make_queue(aws, "protected", visibility=30, max_receive_count=5)
    handled: list[int] = []
    seen_by_handler: list[list[bool]] = []
    done = anyio.Event()

    async def handler(messages: Sequence[Message]) -> BatchResult:
        seen_by_handler.append(list(agent.enabled))
        handled.extend(json.loads(m.body)["n"] for m in messages)
        if len(handled) >= 15:
            done.set()
        return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})

    worker = Worker(name="protected", source=SqsQueue(
        url, settings=SqsSettings(wait_time_seconds=1, max_messages=5)),
        handler=lambda aws, resources: handler)
    await send(aws, url, [json.dumps({"n": n}) for n in range(15)])
    stop = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(worker, resources=Resources({}), drain_seconds=1,
                                        stop=stop, signals=()))
            await done.wait()
            stop.set()
    assert sorted(handled) == list(range(15))
    assert seen_by_handler[0] == [True]  # taken before the first batch was handled
    assert agent.bodies == [{"ProtectionEnabled": True, "ExpiresInMinutes": 10}]
