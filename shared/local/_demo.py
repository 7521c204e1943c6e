"""`fleetline demo`: scripted steps that show the running system working.

Steps are a list: the platform's own (`buses`: an event on each bus reaches the queue its
rule targets) come first; services add theirs through the `fleetline.demo` entry-point group
(`name = "module:step"`, where `step` is a `DemoStep`: an async function taking a
`DemoContext` and returning the lines to print), loaded in name order.

A step that does not see what it set out to show raises `DemoStepFailed` (what it waited
for, what it saw); any exception fails the step, and `fleetline demo` then exits non-zero.
A step never reports a broken pipeline as a result ("0 devices in the read model").
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio

from shared.aws import AwsClients, aws_errors
from shared.cloudformation import Template, load_template
from shared.errors import FleetlineError
from shared.local._endpoint import endpoint_clients
from shared.local._stack import describe_stack, gather_facts
from shared.local._state import UpState
from shared.local._template import resolve

__all__ = ["DemoContext", "DemoStep", "DemoStepFailed", "demo_steps", "run_demo", "run_steps"]


class DemoStepFailed(FleetlineError):
    """A demo step did not see what it set out to show within its time."""

    def __init__(self, waited_for: str, saw: str) -> None:
        super().__init__(f"waited for {waited_for}; saw {saw}")
        self.waited_for = waited_for
        self.saw = saw


@dataclass(frozen=True, kw_only=True)
class DemoContext:
    """What a step may use: clients on the stack's endpoint, the stack's outputs, the
    running processes' URLs, and the parsed template."""

    aws: AwsClients
    state: UpState
    outputs: Mapping[str, str]
    template: Template
    template_path: Path
    extra: dict[str, Any] = field(default_factory=dict)


DemoStep = Callable[[DemoContext], Awaitable[list[str]]]


def demo_steps() -> list[tuple[str, DemoStep]]:
    """The platform's steps, then every `fleetline.demo` entry point by name."""
    steps: list[tuple[str, DemoStep]] = [("buses", bus_round_trip)]
    for ep in sorted(entry_points(group="fleetline.demo"), key=lambda e: e.name):
        steps.append((ep.name, ep.load()))
    return steps


DEMO_SOURCE = "fleetline.demo"


async def bus_round_trip(ctx: DemoContext) -> list[str]:
    """Put an event on each of the stack's buses and show it reaching a queue through a
    rule. The rule and queue are a temporary tap matching only `source: fleetline.demo`, so
    no worker sees the demo event (a made-up event would end in its DLQ); the tap is
    removed afterwards."""
    stack = await describe_stack(ctx.aws, ctx.state.stack_name)
    if stack is None:
        raise DemoStepFailed(f"the stack {ctx.state.stack_name}", "no stack deployed")
    facts = await gather_facts(ctx.aws, ctx.template, stack)
    buses = [
        str(resolve({"Fn::GetAtt": [logical, "Name"]}, ctx.template, facts))
        for logical, resource in ctx.template["Resources"].items()
        if resource.get("Type") == "AWS::Events::EventBus"
    ]
    lines = []
    for bus in buses:
        lines.append(await _tap_round_trip(ctx.aws, bus))
    if not lines:
        raise DemoStepFailed("an event bus in the template", "none")
    return lines


async def _tap_round_trip(aws: AwsClients, bus: str) -> str:
    events = await aws.client("events")
    sqs = await aws.client("sqs")
    name = f"{bus}-demo-tap"[:64]
    marker = uuid.uuid4().hex
    with aws_errors():
        url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
    try:
        with aws_errors():
            await events.put_rule(
                Name=name, EventBusName=bus, EventPattern=json.dumps({"source": [DEMO_SOURCE]})
            )
            await events.put_targets(
                Rule=name, EventBusName=bus, Targets=[{"Id": "tap", "Arn": arn}]
            )
            started = time.monotonic()
            await events.put_events(
                Entries=[
                    {
                        "EventBusName": bus,
                        "Source": DEMO_SOURCE,
                        "DetailType": "DemoPinged",
                        "Detail": json.dumps({"marker": marker}),
                    }
                ]
            )
        seen = await _find_message(sqs, url, marker)
        took = time.monotonic() - started
        if not seen:
            raise DemoStepFailed(f"an event on {bus} to reach the tap queue within 5 s",
                                 "nothing delivered")
        return f"{bus}: event -> rule -> queue in {took:.2f} s"
    finally:
        with aws_errors():
            await events.remove_targets(Rule=name, EventBusName=bus, Ids=["tap"])
            await events.delete_rule(Name=name, EventBusName=bus)
            await sqs.delete_queue(QueueUrl=url)


async def _find_message(sqs: Any, url: str, marker: str, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with aws_errors():
            got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        if any(marker in m["Body"] for m in got.get("Messages", [])):
            return True
    return False


async def run_steps(
    ctx: DemoContext,
    steps: Sequence[tuple[str, DemoStep]],
    echo: Callable[[str], None],
) -> bool:
    """Run every step, printing its lines; a failing step is reported and the rest run.
    Returns True when every step succeeded."""
    ok = True
    for name, step in steps:
        echo(f"== {name}")
        try:
            for line in await step(ctx):
                echo(f"   {line}")
        except Exception as exc:
            ok = False
            echo(f"   failed: {exc}")
    return ok


def run_demo(
    *,
    stack_name: str,
    template: Path,
    state_dir: Path,
    keep_running: bool,
    echo: Callable[[str], None],
) -> bool:
    """`up --detach`, the demo steps, then either wait for Ctrl-C or stop at once; the stack
    is always stopped on the way out. Returns True when every step succeeded.

    The steps' clients go to the stack's endpoint; the environment is read (Region,
    credentials) and left as it is."""
    import os
    import signal

    from shared.local._control import ensure_no_running, start_detached, stop_running

    ensure_no_running(state_dir)
    state = start_detached(
        ["--stack-name", stack_name, "--template", str(template), "--state-dir", str(state_dir)],
        state_dir=state_dir,
    )
    try:
        echo(
            f"READY {state.endpoint} stack={state.stack_name} "
            + " ".join(f"{k}={v}" for k, v in sorted(state.urls.items()))
        )
        parsed = load_template(template)

        async def steps() -> bool:
            async with endpoint_clients(state.endpoint, os.environ) as aws:
                stack = await describe_stack(aws, stack_name)
                ctx = DemoContext(
                    aws=aws,
                    state=state,
                    outputs=stack.outputs if stack else {},
                    template=parsed,
                    template_path=template,
                )
                return await run_steps(ctx, demo_steps(), echo)

        ok = anyio.run(steps)
        if keep_running:
            echo("the stack keeps running (see `fleetline status`); Ctrl-C stops it")
            # Blocked first, so SIGTERM is received here (and the stack stopped) instead of
            # ending this process with the stack still running.
            stops = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stops)
            with contextlib.suppress(KeyboardInterrupt):
                signal.sigwait(stops)
        return ok
    finally:
        stop_running(state_dir)
