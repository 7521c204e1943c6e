"""`fleetline status`: every resource of the template, queue and DLQ depths, stream shards
and lag where measurable, and the local processes (thin AWS calls; rendering is the CLI's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from shared.aws import AwsClients, aws_errors
from shared.cloudformation import Template, load_template
from shared.errors import AwsRequestError, FleetlineError
from shared.local._gaps import NOT_EMULATED, SUPPLIED
from shared.local._stack import StackResource, describe_stack
from shared.local._state import UpState, pid_alive
from shared.local._template import StackFacts, condition_holds

__all__ = [
    "ProcessRow", "QueueRow", "ResourceRow", "StackStatus", "StreamRow", "collect_status",
    "working_outputs",
]


@dataclass(frozen=True, kw_only=True)
class ResourceRow:
    logical_id: str
    type: str
    physical_id: str | None
    state: str


@dataclass(frozen=True, kw_only=True)
class QueueRow:
    logical_id: str
    name: str
    visible: int
    in_flight: int
    delayed: int
    is_dlq: bool


@dataclass(frozen=True, kw_only=True)
class StreamRow:
    logical_id: str
    name: str
    shards: int
    lag: str  # per consumer: "app: 0.0 s" (age of the oldest unprocessed record), or why not


@dataclass(frozen=True, kw_only=True)
class _Checkpoint:
    application: str
    shard_id: str
    sequence: str | None


@dataclass(frozen=True, kw_only=True)
class ProcessRow:
    name: str
    kind: str
    pid: int | None
    alive: bool
    restarts: int
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class StackStatus:
    stack_name: str
    endpoint: str | None
    stack_status: str
    resources: tuple[ResourceRow, ...] = ()
    queues: tuple[QueueRow, ...] = ()
    streams: tuple[StreamRow, ...] = ()
    processes: tuple[ProcessRow, ...] = ()
    urls: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # as they work at this endpoint


def _resource_state(kind: str, deployed: str | None, emulated: bool) -> str:
    if deployed is not None and not (emulated and kind in SUPPLIED and kind.endswith("Pipe")):
        return deployed
    if emulated and kind in SUPPLIED:
        return f"local: {SUPPLIED[kind]}"
    if emulated and kind in NOT_EMULATED:
        return NOT_EMULATED[kind]
    return "not created by the emulator" if emulated else "MISSING"


async def collect_status(
    aws: AwsClients,
    *,
    stack_name: str,
    template_path: Path,
    state: UpState | None,
    emulated: bool = True,
) -> StackStatus:
    """Everything `status` shows. Raises FleetlineError when the stack does not exist."""
    stack = await describe_stack(aws, stack_name)
    if stack is None:
        raise FleetlineError(f"no stack {stack_name} at this endpoint: run `fleetline up`")
    deployed = {r.logical_id: r for r in stack.resources}
    has_template = await anyio.Path(template_path).is_file()
    template = load_template(template_path) if has_template else {"Resources": {}}
    logical_ids = list(template["Resources"]) or list(deployed)
    facts = StackFacts.from_stack_id(stack.stack_id, stack_name=stack_name,
                                     physical=stack.physical_ids(), parameters=stack.parameters)
    rows = []
    for logical in logical_ids:
        kind = template["Resources"].get(logical, {}).get("Type") or deployed[logical].type
        found = deployed.get(logical)
        resource = template["Resources"].get(logical, {})
        if found is None and not condition_holds(resource, template, facts):
            rows.append(ResourceRow(
                logical_id=logical, type=kind, physical_id=None,
                state=f"not in this stack (condition {resource['Condition']} is false)"))
            continue
        rows.append(
            ResourceRow(
                logical_id=logical,
                type=kind,
                physical_id=found.physical_id if found else None,
                state=(state.problems.get(logical) if state else None)
                or _resource_state(kind, found.status if found else None, emulated),
            )
        )
    dlq_logical_ids = {
        _getatt_target(r.get("Properties", {}).get("RedrivePolicy", {}).get("deadLetterTargetArn"))
        for r in template["Resources"].values()
        if r.get("Type") == "AWS::SQS::Queue"
    }
    queues = []
    sqs = await aws.client("sqs")
    for row in rows:
        if row.type != "AWS::SQS::Queue" or not row.physical_id:
            continue
        with aws_errors():
            attrs = (
                await sqs.get_queue_attributes(
                    QueueUrl=row.physical_id,
                    AttributeNames=["All"],
                )
            )["Attributes"]
        name = row.physical_id.rsplit("/", 1)[-1]
        is_dlq = row.logical_id in dlq_logical_ids or name.endswith(("-dlq", "-dlq.fifo"))
        queues.append(
            QueueRow(
                logical_id=row.logical_id,
                name=name,
                visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
                in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
                is_dlq=is_dlq,
            )
        )
    checkpoints = await _checkpoints(aws, template, deployed, stack_name)
    sources = _consumer_sources(template)
    streams = []
    for row in rows:
        if row.type != "AWS::Kinesis::Stream" or not row.physical_id:
            continue
        kinesis = await aws.client("kinesis")
        with aws_errors():
            shards = (await kinesis.list_shards(StreamName=row.physical_id))["Shards"]
        open_shards = [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
        streams.append(
            StreamRow(
                logical_id=row.logical_id,
                name=row.physical_id,
                shards=len(open_shards),
                lag=await _kinesis_lag(
                    kinesis, row.physical_id, shards, _for_source(checkpoints, sources, row)
                ),
            )
        )
    for row in rows:
        resource = template["Resources"].get(row.logical_id, {})
        if row.type != "AWS::DynamoDB::Table" or not row.physical_id:
            continue
        if not resource.get("Properties", {}).get("StreamSpecification"):
            continue
        streams.append(await _table_stream_row(aws, row, _for_source(checkpoints, sources, row)))
    processes = []
    if state is not None:
        for child in state.children:
            processes.append(
                ProcessRow(
                    name=child.name,
                    kind=child.kind,
                    pid=child.pid,
                    alive=pid_alive(child.pid),
                    restarts=child.restarts,
                    note=state.urls.get(child.name, ""),
                )
            )
        for name, reason in state.skipped.items():
            processes.append(
                ProcessRow(
                    name=name,
                    kind="-",
                    pid=None,
                    alive=False,
                    restarts=0,
                    note=f"not started: {reason}",
                )
            )
    return StackStatus(
        stack_name=stack_name,
        endpoint=state.endpoint if state else None,
        stack_status=stack.status,
        resources=tuple(rows),
        queues=tuple(queues),
        streams=tuple(streams),
        processes=tuple(processes),
        urls=dict(state.urls) if state else {},
        outputs=working_outputs(template, stack.outputs, state.urls if state else {}),
    )


def working_outputs(template: Template, outputs: dict[str, str],
                    urls: dict[str, str]) -> dict[str, str]:
    """The stack's outputs as they work at this endpoint (pure). The emulator skips some
    resources (an HTTP API) and leaves the outputs built on them unresolved
    (`https://${OrdersApi}.execute-api...`); when a local process serves that resource
    (`urls`, keyed by its logical id), its URL is the output that works."""
    shown = dict(outputs)
    for key, declared in (template.get("Outputs") or {}).items():
        value = declared.get("Value")
        text = value.get("Fn::Sub") if isinstance(value, dict) else None
        if not isinstance(text, str):
            continue
        served = [name for name in urls if "${" + name + "}" in text]
        if served:
            shown[key] = urls[served[0]]
    return shown


async def _checkpoints(
    aws: AwsClients, template: Template, deployed: dict[str, StackResource], stack_name: str
) -> list[_Checkpoint]:
    """Every shard checkpoint in the stack's lease tables (tables keyed by `lease_key`) and in
    the local mappings' lease table. Small tables: one Scan each."""
    tables = [
        deployed[logical].physical_id
        for logical, resource in template["Resources"].items()
        if resource.get("Type") == "AWS::DynamoDB::Table"
        and logical in deployed
        and any(
            k.get("AttributeName") == "lease_key"
            for k in resource.get("Properties", {}).get("KeySchema", [])
        )
    ]
    tables.append(f"{stack_name}-local-mapping-leases")
    dynamodb = await aws.client("dynamodb")
    found: list[_Checkpoint] = []
    for table in tables:
        if not table:
            continue
        try:
            with aws_errors():
                items = (await dynamodb.scan(TableName=table))["Items"]
        except AwsRequestError:  # the local table exists only when a mapping needs it
            continue
        for item in items:
            if "shard_id" not in item:
                continue
            found.append(
                _Checkpoint(
                    application=item.get("application", {}).get("S", "?"),
                    shard_id=item["shard_id"]["S"],
                    sequence=item.get("checkpoint", {}).get("S"),
                )
            )
    return found


async def _kinesis_lag(
    kinesis: Any, stream: str, shards: list[dict[str, Any]], checkpoints: list[_Checkpoint]
) -> str:
    """Per consumer application, the age of the oldest record not yet checkpointed (0 when
    caught up): what the IteratorAge metric shows on AWS."""
    shard_ids = {s["ShardId"] for s in shards}
    mine = [c for c in checkpoints if c.shard_id in shard_ids]
    if not mine:
        return "no consumer checkpoint"
    worst: dict[str, float] = {}
    for checkpoint in mine:
        if checkpoint.sequence == "SHARD_END":
            continue
        if checkpoint.sequence is None:
            position: dict[str, str] = {"ShardIteratorType": "TRIM_HORIZON"}
        else:
            position = {
                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "StartingSequenceNumber": checkpoint.sequence,
            }
        with aws_errors():
            iterator = (
                await kinesis.get_shard_iterator(
                    StreamName=stream, ShardId=checkpoint.shard_id, **position
                )
            )["ShardIterator"]
            records = (await kinesis.get_records(ShardIterator=iterator, Limit=1))["Records"]
        age = 0.0
        if records:
            arrived = records[0].get("ApproximateArrivalTimestamp")
            if isinstance(arrived, datetime):
                age = max(0.0, time.time() - arrived.timestamp())
        worst[checkpoint.application] = max(worst.get(checkpoint.application, 0.0), age)
    return ", ".join(f"{app}: {age:.1f} s" for app, age in sorted(worst.items())) or "drained"


def _getatt_target(value: Any) -> str | None:
    """`{"Fn::GetAtt": ["Dlq", "Arn"]}` -> "Dlq" (a redrive target in the template)."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else str(target).split(".")[0])
    return None


async def _table_stream_row(
    aws: AwsClients, row: ResourceRow, checkpoints: list[_Checkpoint]
) -> StreamRow:
    """A table's stream: its open shards and, per consumer (pipes, stream mappings,
    projections), the age of the oldest record after the checkpoint."""
    dynamodb = await aws.client("dynamodb")
    streams = await aws.client("dynamodbstreams")
    with aws_errors():
        arn = (await dynamodb.describe_table(TableName=row.physical_id))["Table"].get(
            "LatestStreamArn"
        )
    if not arn:
        return StreamRow(
            logical_id=row.logical_id,
            name=f"{row.physical_id} (stream)",
            shards=0,
            lag="stream disabled",
        )
    with aws_errors():
        shards = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"]
    shard_ids = {s["ShardId"] for s in shards}
    open_shards = [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
    worst: dict[str, float] = {}
    for checkpoint in (c for c in checkpoints if c.shard_id in shard_ids):
        if checkpoint.sequence == "SHARD_END":
            continue
        position: dict[str, str] = (
            {"ShardIteratorType": "TRIM_HORIZON"}
            if checkpoint.sequence is None
            else {
                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "SequenceNumber": checkpoint.sequence,
            }
        )
        with aws_errors():
            iterator = (
                await streams.get_shard_iterator(
                    StreamArn=arn, ShardId=checkpoint.shard_id, **position
                )
            )["ShardIterator"]
            records = (await streams.get_records(ShardIterator=iterator, Limit=1))["Records"]
        age = 0.0
        if records:
            created = records[0].get("dynamodb", {}).get("ApproximateCreationDateTime")
            if isinstance(created, datetime):
                age = max(0.0, time.time() - created.timestamp())
        worst[checkpoint.application] = max(worst.get(checkpoint.application, 0.0), age)
    lag = ", ".join(f"{app}: {age:.1f} s" for app, age in sorted(worst.items()))
    return StreamRow(
        logical_id=row.logical_id,
        name=f"{row.physical_id} (stream)",
        shards=len(open_shards),
        lag=lag or "no consumer checkpoint",
    )


def _consumer_sources(template: Template) -> dict[str, str]:
    """Consumer application -> the logical id of the stream it reads, for the consumers the
    template declares (pipes and event source mappings use their logical id as the
    application locally). Workers name their own applications; they are matched by shard."""
    found: dict[str, str] = {}
    for logical, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        source = {
            "AWS::Pipes::Pipe": props.get("Source"),
            "AWS::Lambda::EventSourceMapping": props.get("EventSourceArn"),
        }.get(resource.get("Type", ""))
        target = _getatt_target(source)
        if target is not None:
            found[logical] = target
    return found


def _for_source(
    checkpoints: list[_Checkpoint], sources: dict[str, str], row: ResourceRow
) -> list[_Checkpoint]:
    """The checkpoints that may belong to `row`'s stream: a declared consumer only on its own
    source (the emulator reuses shard ids across streams), any other by shard id later."""
    return [c for c in checkpoints if sources.get(c.application, row.logical_id) == row.logical_id]
