"""`fleetline dlq ...` and `fleetline replay`: thin commands over `shared.operations`.

The stack is the running `fleetline up`'s (its state file), else the one at
AWS_ENDPOINT_URL, else AWS's (standard configuration), named by `--stack-name`. Expected
failures print one `error:` line and exit 1; `--json` prints machine-readable output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table

from shared.aws import AwsClients
from shared.cloudformation import DEFAULT_TEMPLATE, load_template
from shared.errors import FleetlineError

__all__ = ["dlq_app", "replay", "trace"]

T = TypeVar("T")
console = Console()
err = Console(stderr=True)
dlq_app = typer.Typer(no_args_is_help=True, help="the stack's dead-letter queues")

StackOpt = Annotated[str | None, typer.Option("--stack-name", help="the stack (default: up's)")]
TemplateOpt = Annotated[Path, typer.Option("--template", help="the stack's template")]
StateDirOpt = Annotated[Path, typer.Option("--state-dir", envvar="FLEETLINE_STATE_DIR")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _on_stack(state_dir: Path, stack_name: str | None,
              work: Callable[[AwsClients, str], Awaitable[T]]) -> T:
    """Run `work(clients, stack name)` against the stack this command means."""
    from shared.local import endpoint_clients, read_state

    async def run() -> T:
        state = read_state(state_dir)
        live = state if state is not None and state.phase.value == "ready" else None
        endpoint = None if os.environ.get("AWS_ENDPOINT_URL") else (
            live.endpoint if live else None)
        name = stack_name or (live.stack_name if live else "fleetline")
        async with endpoint_clients(endpoint, os.environ) as aws:
            return await work(aws, name)

    try:
        return anyio.run(run)
    except (FleetlineError, ValueError, TimeoutError) as exc:
        raise _fail(str(exc)) from None


async def _queues(aws: AwsClients, stack: str, template: Path) -> Any:
    from shared.operations import DeadLetterQueues, dead_letter_sources, stack_queues

    return DeadLetterQueues(aws, await stack_queues(aws, stack),
                            dead_letter_sources(load_template(template)))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(
        timespec="seconds")


@dlq_app.command("list")
def dlq_list(stack_name: StackOpt = None, template: TemplateOpt = DEFAULT_TEMPLATE,
             state_dir: StateDirOpt = Path(".fleetline"), as_json: JsonOpt = False) -> None:
    """Every DLQ of the stack: depth, age of the oldest message, its sources."""

    async def work(aws: AwsClients, stack: str) -> Any:
        return await (await _queues(aws, stack, template)).summaries()

    rows = _on_stack(state_dir, stack_name, work)
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return
    table = Table("dlq", "depth", "in flight", "oldest", "source", "redrive to", title="DLQs")
    for r in rows:
        table.add_row(r.name, str(r.depth), str(r.in_flight),
                      "-" if r.oldest_age_s is None else f"{r.oldest_age_s:.0f} s",
                      "\n".join(r.sources), ", ".join(r.redrive_to) or "-",
                      style="red" if r.depth else None)
    console.print(table)


@dlq_app.command("peek")
def dlq_peek(queue: Annotated[str, typer.Argument(help="DLQ: logical id, name or URL")],
             n: Annotated[int, typer.Option("-n", help="how many messages")] = 10,
             stack_name: StackOpt = None, template: TemplateOpt = DEFAULT_TEMPLATE,
             state_dir: StateDirOpt = Path(".fleetline"), as_json: JsonOpt = False) -> None:
    """Messages of a DLQ with the reason, error class, receive count, first failure and trace
    id; they stay in the DLQ."""

    async def work(aws: AwsClients, stack: str) -> Any:
        return await (await _queues(aws, stack, template)).peek(queue, n)

    messages = _on_stack(state_dir, stack_name, work)
    if as_json:
        _print_json([dataclasses.asdict(m) for m in messages])
        return
    if not messages:
        console.print(f"{queue}: empty")
    for m in messages:
        console.print(f"[bold]{m.message_id}[/bold] error={m.error or '-'} "
                      f"receives={m.receive_count if m.receive_count is not None else '-'} "
                      f"first failure={_when(m.first_failure_at)} "
                      f"dead-lettered={_when(m.dead_lettered_at)} "
                      f"from={m.source_queue or '-'} trace={m.trace_id or '-'}",
                      highlight=False, soft_wrap=True)
        console.print(f"  reason: {m.reason or '-'}", highlight=False, soft_wrap=True)
        console.print(f"  body: {m.body[:2000]}", highlight=False, soft_wrap=True)


@dlq_app.command("redrive")
def dlq_redrive(queue: Annotated[str, typer.Argument(help="DLQ: logical id, name or URL")],
                max_messages: Annotated[int | None, typer.Option(
                    "--max", help="move at most N messages")] = None,
                stack_name: StackOpt = None, template: TemplateOpt = DEFAULT_TEMPLATE,
                state_dir: StateDirOpt = Path(".fleetline"), as_json: JsonOpt = False) -> None:
    """Move a DLQ's messages back to their source queue (what was applied is skipped)."""

    async def work(aws: AwsClients, stack: str) -> Any:
        return await (await _queues(aws, stack, template)).redrive(
            queue, max_messages=max_messages)

    result = _on_stack(state_dir, stack_name, work)
    if as_json:
        _print_json(dataclasses.asdict(result))
        return
    moved = ", ".join(f"{n} to {q}" for q, n in result.by_destination.items()) or "nothing"
    console.print(f"{result.queue}: moved {moved} ({result.method})"
                  + (f"; {result.left} left (their source cannot be told)" if result.left
                     else ""), highlight=False)


@dlq_app.command("purge")
def dlq_purge(queue: Annotated[str, typer.Argument(help="DLQ: logical id, name or URL")],
              yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
              stack_name: StackOpt = None, template: TemplateOpt = DEFAULT_TEMPLATE,
              state_dir: StateDirOpt = Path(".fleetline"), as_json: JsonOpt = False) -> None:
    """Delete every message of a DLQ (asks first, unless --yes)."""
    if not yes and not typer.confirm(f"delete every message of {queue}?", default=False):
        raise _fail("not purged (answer y, or pass --yes)")

    async def work(aws: AwsClients, stack: str) -> Any:
        return await (await _queues(aws, stack, template)).purge(queue)

    depth = _on_stack(state_dir, stack_name, work)
    if as_json:
        _print_json({"queue": queue, "purged": depth})
        return
    console.print(f"{queue}: purged about {depth} messages", highlight=False)


def _moment(text: str, now: datetime) -> datetime:
    """An ISO time (`2026-12-06T10:00`, UTC unless it says), `now`, or `-1h` / `-30m` /
    `-2d` before now."""
    if text == "now":
        return now
    if text.startswith("-") and text[-1:] in {"s", "m", "h", "d"}:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[text[-1]]
        return now - timedelta(**{unit: float(text[1:-1])})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: ISO 8601, `now`, or -30m / -1h / -2d"
                         ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def replay(
    bus: Annotated[str, typer.Option("--bus", help="bus: logical id, name, or short name")],
    from_: Annotated[str, typer.Option("--from", help="window start: ISO time or -1h")],
    to: Annotated[str, typer.Option("--to", help="window end: ISO time, -5m, or now")] = "now",
    event_type: Annotated[str | None, typer.Option(
        "--event-type", help="only through the rules that match this detail-type")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan only")] = False,
    stack_name: StackOpt = None, template: TemplateOpt = DEFAULT_TEMPLATE,
    state_dir: StateDirOpt = Path(".fleetline"), as_json: JsonOpt = False,
) -> None:
    """Replay a window of a bus's archive onto the bus; consumers skip what they applied."""
    from shared.operations import (
        bus_archives,
        check_window,
        rules_for_type,
        stack_physical_ids,
        start_replay,
        wait_replay,
    )

    parsed = load_template(template)
    archives = bus_archives(parsed)
    now = datetime.now(UTC)

    async def work(aws: AwsClients, stack: str) -> dict[str, Any]:
        physical = await stack_physical_ids(aws, stack)
        chosen = _choose_bus(bus, archives, physical)
        archive_id, retention = archives[chosen]
        window = check_window(_moment(from_, now), _moment(to, now),
                              retention_days=retention, now=time.time())
        events = await aws.client("events")
        bus_name = physical[chosen][1].rsplit("/", 1)[-1]
        bus_arn = (await events.describe_event_bus(Name=bus_name))["Arn"]
        archive_arn = (await events.describe_archive(
            ArchiveName=physical[archive_id][1].rsplit("/", 1)[-1]))["ArchiveArn"]
        rules = rules_for_type(parsed, chosen, event_type)
        if event_type and not rules:
            raise FleetlineError(f"no rule on {bus_name} matches {event_type}: a replay "
                                 "would reach nobody")
        filter_arns = []
        if event_type:
            for rule in rules:
                name = physical[rule][1].split("|")[-1].rsplit("/", 1)[-1]
                filter_arns.append((await events.describe_rule(
                    Name=name, EventBusName=bus_name))["Arn"])
        plan: dict[str, Any] = {
            "bus": bus_name, "archive": archive_arn, "from": window.start.isoformat(),
            "to": window.end.isoformat(), "event_type": event_type,
            "through_rules": rules if event_type else "every rule of the bus",
            "dry_run": dry_run,
        }
        if dry_run:
            return plan
        name = await start_replay(aws, archive_arn=archive_arn, bus_arn=bus_arn,
                                  window=window, filter_arns=filter_arns)
        plan["replay"] = name
        plan["state"] = await wait_replay(aws, name)
        return plan

    plan = _on_stack(state_dir, stack_name, work)
    if as_json:
        _print_json(plan)
        return
    console.print(f"replay of {plan['bus']} {plan['from']} .. {plan['to']} through "
                  f"{plan['through_rules']}: "
                  + ("dry run, nothing replayed" if dry_run else
                     f"{plan['replay']} {plan['state']}"), highlight=False, soft_wrap=True)


def _choose_bus(bus: str, archives: dict[str, tuple[str, int]],
                physical: dict[str, tuple[str, str]]) -> str:
    """The logical id of the archived bus `bus` names (logical id, name, or the name's end)."""
    for logical in archives:
        name = physical.get(logical, ("", ""))[1].rsplit("/", 1)[-1]
        if bus in (logical, name) or name.endswith(f"-{bus}"):
            return logical
    raise FleetlineError(f"no archived bus {bus!r}; the archived buses: "
                         + ", ".join(physical.get(b, ("", b))[1] for b in archives))


def trace(
    wanted: Annotated[str, typer.Argument(
        metavar="ID", help="a trace id, an order id, a device id (any span attribute)")],
    limit: Annotated[int, typer.Option("--last", help="at most this many traces")] = 3,
    state_dir: StateDirOpt = Path(".fleetline"), as_json: JsonOpt = False,
) -> None:
    """The waterfall of the spans `fleetline up`'s receiver got for an id: every trace it
    names, and the traces they link (a batch and its messages' producers)."""
    from shared.local import find_traces, read_spans, spans_path, waterfall

    path = spans_path(state_dir)
    if not path.exists():
        raise _fail(f"no spans at {path}: `fleetline up` keeps them there (its processes "
                    "export to its receiver unless OTEL_EXPORTER_OTLP_ENDPOINT is set)")
    traces = find_traces(read_spans(path), wanted)
    if not traces:
        raise _fail(f"no span names {wanted!r} in {path} (spans arrive within a second; "
                    "try again, or check the id)")
    if as_json:
        _print_json([[dataclasses.asdict(s) for s in t] for t in traces[:limit]])
        return
    for spans in traces[:limit]:
        for line in waterfall(spans):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        console.print("")
    if len(traces) > limit:
        console.print(f"({len(traces) - limit} more traces, older or linked: --last N)",
                      highlight=False)
