"""`fleetline demo`: scripted steps that show the running system working.

Steps are a list: the platform's own (`buses`: an event on each bus reaches the queue its
rule targets) come first; services add theirs through the `fleetline.demo` entry-point group
(`name = "module:step"`, where `step` is a `DemoStep`: an async function taking a
`DemoContext` and returning the lines to print), loaded in name order.
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
from shared.local._stack import describe_stack, gather_facts
from shared.local._state import UpState
from shared.local._template import Template, load_template, resolve

__all__ = ["DemoContext", "DemoStep", "demo_steps", "run_demo", "run_steps", "sample_event"]


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


def _sample_value(condition: Any) -> tuple[bool, Any]:
    """(present, value) satisfying one element of a pattern's match list."""
    if not isinstance(condition, dict):
        return True, condition
    if "prefix" in condition:
        prefix = condition["prefix"]
        prefix = prefix.get("equals-ignore-case", "") if isinstance(prefix, dict) else prefix
        return True, f"{prefix}demo"
    if "suffix" in condition:
        suffix = condition["suffix"]
        return True, f"demo{suffix if isinstance(suffix, str) else ''}"
    if "equals-ignore-case" in condition:
        return True, condition["equals-ignore-case"]
    if "exists" in condition:
        return bool(condition["exists"]), "demo"
    if "anything-but" in condition:
        return True, f"demo-{uuid.uuid4().hex[:6]}"
    if "numeric" in condition:
        ops = condition["numeric"]
        low = next(
            (float(ops[i + 1]) for i in range(0, len(ops), 2) if ops[i] in {">", ">=", "="}), 0.0
        )
        return True, low + 1 if ">" in ops else low
    if "wildcard" in condition:
        return True, str(condition["wildcard"]).replace("*", "demo")
    return True, "demo"


def sample_event(pattern: Mapping[str, Any]) -> dict[str, Any]:
    """An event that matches an EventBridge pattern (first alternative of each field).

    Pure; used to show a rule working. Nested objects recurse; `exists: false` fields are
    left out.
    """
    event: dict[str, Any] = {}
    for key, value in pattern.items():
        if isinstance(value, Mapping):
            event[key] = sample_event(value)
        elif isinstance(value, list) and value:
            present, sample = _sample_value(value[0])
            if present:
                event[key] = sample
    return event


async def bus_round_trip(ctx: DemoContext) -> list[str]:
    """Put an event matching each SQS-targeted rule on its bus; show it in the queue, then
    make it visible again at once so the queue's worker still gets it."""
    stack = await describe_stack(ctx.aws, ctx.state.stack_name)
    if stack is None:
        return ["no stack deployed"]
    facts = await gather_facts(ctx.aws, ctx.template, stack)
    events = await ctx.aws.client("events")
    sqs = await ctx.aws.client("sqs")
    lines = []
    for logical, resource in ctx.template["Resources"].items():
        if resource.get("Type") != "AWS::Events::Rule":
            continue
        props = resolve(resource.get("Properties", {}), ctx.template, facts)
        targets = [t for t in props.get("Targets", []) if ":sqs:" in str(t.get("Arn", ""))]
        if not targets or "EventPattern" not in props:
            continue
        pattern = props["EventPattern"]
        pattern = json.loads(pattern) if isinstance(pattern, str) else pattern
        sample = sample_event(pattern)
        bus = str(props.get("EventBusName", "default"))
        detail = sample.get("detail", {})
        detail.setdefault("demo_id", uuid.uuid4().hex)
        with aws_errors():
            await events.put_events(
                Entries=[
                    {
                        "EventBusName": bus,
                        "Source": str(sample.get("source", "fleetline.demo")),
                        "DetailType": str(sample.get("detail-type", "DemoPinged")),
                        "Detail": json.dumps(detail),
                    }
                ]
            )
        queue_name = str(targets[0]["Arn"]).rsplit(":", 1)[-1]
        with aws_errors():
            url = (await sqs.get_queue_url(QueueName=queue_name))["QueueUrl"]
        seen = await _find_message(sqs, url, str(detail["demo_id"]))
        verdict = "arrived" if seen else "not seen in 5 s (a worker may have taken it)"
        lines.append(f"{logical}: {bus} -> {queue_name}: {verdict}")
    return lines or ["no rule targets a queue"]


async def _find_message(sqs: Any, url: str, marker: str, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with aws_errors():
            got = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                VisibilityTimeout=5,
            )
        found = False
        entries = []
        for message in got.get("Messages", []):
            found = found or marker in message["Body"]
            entries.append(
                {
                    "Id": message["MessageId"],
                    "ReceiptHandle": message["ReceiptHandle"],
                    "VisibilityTimeout": 0,
                }
            )
        if entries:  # hand everything back at once: the demo only looks
            with aws_errors():
                await sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        if found:
            return True
        await anyio.sleep(0.2)
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
    is always stopped on the way out. Returns True when every step succeeded."""
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
        if state.endpoint:
            os.environ["AWS_ENDPOINT_URL"] = state.endpoint
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        parsed = load_template(template)

        async def steps() -> bool:
            async with AwsClients() as aws:
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
            with contextlib.suppress(KeyboardInterrupt):
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return ok
    finally:
        stop_running(state_dir)
