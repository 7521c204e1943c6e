"""The seam between the local hosts and the runtime's own consumers and relay.

Lambda event source mappings and pipes are not re-implemented here: a mapping is polled by
the same consumer an ECS worker uses (`shared.consumers.sqs` / `.kinesis` /
`.dynamodb_streams`, its queue ARNs resolved by the same `shared.consumers.sqs.queue_url`),
and a pipe is the outbox relay (`shared.outbox`). This module only adapts a mapping's
settings to those classes.
`missing(kind)` says why a kind cannot run yet (its consumer is not importable), so `up`
skips it with that reason instead of crash-looping a process.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from shared.errors import ConfigurationError

if TYPE_CHECKING:  # the supervisor plans with this module; only the hosts consume
    from shared.consumers import BatchResult, Message

__all__ = ["consume", "missing", "relay", "source_kind"]

BatchHandler = Callable[[Sequence["Message"]], Awaitable["BatchResult"]]

RELAY_IDLE_BACKOFF = 0.25  # seconds after an empty read of the outbox stream (see `relay`)
RELAY_PAGE = 1_000  # records per read of the outbox stream (see `relay`)

# kind -> (module, attribute) that must exist for the kind to run locally
_REQUIRED = {
    "sqs": ("shared.consumers.sqs", "SqsConsumer"),
    "kinesis": ("shared.consumers.kinesis", "KinesisConsumer"),
    "dynamodb-stream": ("shared.consumers.dynamodb_streams", "DynamoDBStreamsConsumer"),
    "pipe": ("shared.outbox", "Relay"),
}


def source_kind(arn: str) -> str:
    """ "sqs" | "kinesis" | "dynamodb-stream" for an event source ARN. Raises ConfigurationError."""
    if arn.startswith("arn:aws:sqs:"):
        return "sqs"
    if arn.startswith("arn:aws:kinesis:"):
        return "kinesis"
    if arn.startswith("arn:aws:dynamodb:") and "/stream/" in arn:
        return "dynamodb-stream"
    raise ConfigurationError(f"event source {arn} is not SQS, Kinesis or a DynamoDB stream")


def _find(kind: str) -> Any:
    module_name, attribute = _REQUIRED[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, attribute, None)


def missing(kind: str) -> str | None:
    """None when `kind` can run, else the reason (for `status`). Looks the module up
    without importing it (the supervisor does not need the consumers itself)."""
    if kind not in _REQUIRED:
        return f"unknown source kind {kind!r}"
    module_name, attribute = _REQUIRED[kind]
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{module_name}.{attribute} is not available"


def local_lease_table(stack_name: str) -> str:
    """Stream mappings share shards through leases like every stream consumer here; Lambda
    keeps its checkpoints internally, so locally they live in this table, created by `up`
    in the emulator only (it is not part of the template)."""
    return f"{stack_name}-local-mapping-leases"


async def consume(
    kind: str,
    mapping: dict[str, Any],
    handler: BatchHandler,
    stop: anyio.Event,
) -> None:
    """Poll the mapping's source with the runtime's consumer until `stop` is set, then let
    it drain (the supervisor's stop timeout bounds the drain)."""
    from shared.aws import AwsClients

    consumer_type = _find(kind)
    if consumer_type is None:
        raise ConfigurationError(missing(kind) or kind)
    source_arn = str(mapping["source_arn"])
    async with AwsClients() as aws, anyio.create_task_group() as tg:
        if kind == "sqs":
            from shared.consumers.sqs import DeadLetterMode, SqsSettings, queue_url

            settings = SqsSettings(
                max_messages=min(10, int(mapping.get("batch_size", 10))),
                max_in_flight=min(10, int(mapping.get("batch_size", 10))),
                # Lambda leaves failed messages to the queue's redrive policy.
                dead_letter=DeadLetterMode.REDRIVE,
                wait_time_seconds=int(mapping.get("wait_time_seconds", 20)),
                drain_seconds=float(mapping.get("drain_seconds", 10)),
            )
            queue = await queue_url(aws, source_arn)
            consumer = consumer_type(aws, queue, handler, settings=settings)
            await tg.start(consumer.run)
            await stop.wait()
            consumer.stop()
            return
        from shared.consumers.sqs import queue_url
        from shared.consumers.streams import (
            InitialPosition,
            StreamConsumerConfig,
            create_lease_table,
        )

        table = str(mapping["lease_table"])
        await create_lease_table(aws, table)
        config = StreamConsumerConfig(
            lease_table=table,
            application=str(mapping["logical_id"]),
            initial_position=InitialPosition(str(mapping.get("starting_position", "TRIM_HORIZON"))),
            limit=int(mapping.get("batch_size", 100)),
            failure_queue_url=(
                await queue_url(aws, str(mapping["failure_arn"]))
                if mapping.get("failure_arn")
                else None
            ),
            shutdown_grace=float(mapping.get("drain_seconds", 10)),
        )
        if "idle_backoff" in mapping:
            config = dataclasses.replace(config, idle_backoff=float(mapping["idle_backoff"]))
        if kind == "kinesis":
            # By name: the emulator's GetRecords does not resolve a stream ARN.
            name = source_arn.rsplit("/", 1)[-1]
            consumer = consumer_type(aws, handler, stream=name, config=config)
        else:
            consumer = consumer_type(aws, handler, stream_arn=source_arn, config=config)
        await tg.start(consumer.run)
        await stop.wait()
        consumer.stop()


async def relay(spec: dict[str, Any], stop: anyio.Event) -> None:
    """Stand in for one EventBridge Pipe (outbox stream -> bus) until `stop` is set: the
    runtime's DynamoDB Streams consumer feeding the outbox `Relay`. The relay extracts the
    events itself with the same function the Pipe's enrichment Lambda uses, so the enrichment
    is not invoked separately; events keep their ids either way."""
    from shared.aws import AwsClients

    relay_type = _find("pipe")
    if relay_type is None:
        raise ConfigurationError(missing("pipe") or "pipe")
    outbox = importlib.import_module("shared.outbox")
    bus = str(spec["target_arn"]).rsplit("/", 1)[-1]
    async with AwsClients() as aws:
        # Events over 256 KB go out claim-checked, as the Pipe's enrichment does on AWS.
        config = outbox.PublisherConfig(
            bus_name=bus, claim_check_bucket=spec.get("claim_check_bucket") or None
        )
        handler = relay_type(aws, config)
        source = spec.get("source_parameters", {}).get("DynamoDBStreamParameters", {})
        mapping = {
            "logical_id": spec["logical_id"],
            "source_arn": spec["source_arn"],
            "lease_table": spec["lease_table"],
            # Pages of up to 1,000 records (the GetRecords maximum), not the Pipe's BatchSize:
            # BatchSize is what the Pipe hands its target at once (PutEvents takes 10), and
            # the relay's publisher already sends PutEvents of 10 in stream order per
            # aggregate. Reading 10 at a time cost a GetRecords and a checkpoint per 10
            # records, and with every device write on the stream the relay fell minutes
            # behind `fleetline simulate --devices 10000` (docs/local.md).
            "batch_size": RELAY_PAGE,
            "starting_position": source.get("StartingPosition", "TRIM_HORIZON"),
            # The pipe's dead-letter queue receives what the relay cannot publish.
            "failure_arn": source.get("DeadLetterConfig", {}).get("Arn"),
            # An EventBridge Pipe polls a DynamoDB stream about 4 times a second per shard;
            # the runtime's 1 s default would add up to a second per outbox hop (the devices
            # dashboard's budget is 1 s end to end). DynamoDB Streams allows 5 GetRecords per
            # second per shard; the relay is the stream's one reader.
            "idle_backoff": RELAY_IDLE_BACKOFF,
        }
        await consume("dynamodb-stream", mapping, handler, stop)
