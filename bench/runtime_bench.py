"""Runtime benchmark (issue 3): consume a message from SQS and apply its effect once (a state
change, an event for the outbox, dedupe of the message), run several ways in one run against
the embedded emulator:

    floor           receive(10) + DeleteMessageBatch, no work (the least any SQS worker pays)
    consumer        ours, no work: SqsConsumer with a handler that applies nothing (the least
                    our consumer pays; the rest of a runtime variant is the effect)
    runtime         ours, the default path: SqsConsumer + BatchCommitter (WriteMode.STATEMENTS):
                    one conditional write per aggregate (state, outbox events and the
                    processed id ride in the aggregate item), a batch's writes in one
                    BatchExecuteStatement; tracing off (no SDK provider)
    runtime-traced  the same with tracing on as deployed: the OpenTelemetry SDK, a CONSUMER
                    span per message, BatchSpanProcessor + OTLP/HTTP exporter to a sink in
                    the benchmark's process (its export thread's CPU is the worker's)
    runtime-transaction
                    ours, WriteMode.TRANSACTION: one TransactWriteItems per batch (2 WRU
                    per item)
    runtime-items   ours, WriteMode.ITEMS: one conditional PutItem per aggregate (one
                    request per message)
    powertools      aws-lambda-powertools BatchProcessor + idempotent_function (DynamoDB
                    persistence) + an UpdateItem for the state + a PutItem outbox row, driven
                    by a plain boto3 receive / DeleteMessageBatch loop
    naive           boto3 per message: GetItem dedupe, PutItem dedupe, UpdateItem state,
                    PutItem outbox row, DeleteMessage

    .venv/bin/python bench/runtime_bench.py [--messages 600] [--devices 200]
        [--duplicate-every 50] [--variants runtime,powertools,...] [--rounds 3]

Each variant runs in its own worker subprocess; its CPU is `time.process_time()` of that
process over the consume loop (the emulator and the producer run in other processes).
Requests are counted with botocore `before-send` events in the worker; DynamoDB write units =
writes x units per write of the largest item measured after the run (x2 inside a
transaction; a PartiQL statement is a standard write, counted from the request body as
sent); read units 0.5 per eventually consistent item read. Dollars per million
messages at bench/prices.py: DynamoDB units + SQS requests + the worker's CPU on Fargate.
Messages are sent in waves that keep the queue shallow (moto slows with queue depth); every
`--duplicate-every`-th message is a second delivery of an earlier event, and after each run
the device counters are checked: each distinct event applied exactly once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._runtime_support import (  # noqa: E402
    DeviceReported,
    ReadingRecorded,
    SpanSink,
    Tally,
    item_size,
    trace_to,
    units_per_write,
)
from bench.prices import dollars  # noqa: E402

VARIANTS = ("floor", "consumer", "runtime", "runtime-traced", "runtime-transaction",
            "runtime-items", "powertools", "naive")
# Our variants: the committer's write mode (None: no committer, every message succeeds).
_MODES = {"consumer": None, "runtime": "statements", "runtime-traced": "statements",
          "runtime-transaction": "transaction", "runtime-items": "items"}
# Variants that trace as a deployed worker does (SDK + OTLP exporter to a span sink in this
# process); the others run with tracing off (no provider): the difference is tracing's cost.
_TRACED = ("runtime-traced",)
_NO_EFFECT = ("floor", "consumer")
WAIT_SECONDS = 2  # long poll; the producer keeps the queue non-empty, so polls return at once


# ------------------------------------------------------------------------------ workers


def _boto3_session(tally: Tally) -> Any:
    import boto3

    session = boto3.Session()
    tally.register(session.events)
    return session


def _done_file(prefix: str) -> Path:
    """Created by the producer when the queue is drained: our worker then stops."""
    return Path(tempfile.gettempdir()) / f"fleetline-{prefix}.done"


def _tables(prefix: str) -> dict[str, str]:
    return {"state": f"{prefix}-state", "idem": f"{prefix}-idem", "outbox": f"{prefix}-outbox"}


def worker_floor(url: str, prefix: str, expected: int, tally: Tally) -> float:
    sqs = _boto3_session(tally).client("sqs")
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])  # warm up
    tally.reset()
    started = time.process_time()
    done = 0
    while done < expected:
        page = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=WAIT_SECONDS)
        messages = page.get("Messages", [])
        if messages:
            sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)])
            done += len(messages)
    return time.process_time() - started


def worker_naive(url: str, prefix: str, expected: int, tally: Tally) -> float:
    from shared.events import Envelope

    session = _boto3_session(tally)
    sqs, dynamodb = session.client("sqs"), session.client("dynamodb")
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    dynamodb.describe_table(TableName=_tables(prefix)["state"])
    tables = _tables(prefix)
    tally.reset()
    started = time.process_time()
    done = 0
    while done < expected:
        page = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=WAIT_SECONDS)
        for message in page.get("Messages", []):
            done += 1
            envelope = json.loads(message["Body"])
            seen = dynamodb.get_item(TableName=tables["idem"],
                                     Key={"pk": {"S": envelope["id"]}}).get("Item")
            if seen is None:
                dynamodb.put_item(TableName=tables["idem"], Item={
                    "pk": {"S": envelope["id"]},
                    "expires_at": {"N": str(int(time.time()) + 7 * 86400)}})
                data = envelope["data"]
                updated = dynamodb.update_item(
                    TableName=tables["state"], Key={"pk": {"S": data["device_id"]}},
                    UpdateExpression="SET #l = :v ADD #c :one",
                    ExpressionAttributeNames={"#l": "last", "#c": "count"},
                    ExpressionAttributeValues={":v": {"N": str(data["value"])},
                                               ":one": {"N": "1"}},
                    ReturnValues="UPDATED_NEW")
                count = int(updated["Attributes"]["count"]["N"])
                event = Envelope.new(
                    ReadingRecorded(device_id=data["device_id"], value=data["value"],
                                    count=count),
                    aggregate_id=data["device_id"], sequence=count)
                dynamodb.put_item(TableName=tables["outbox"], Item={
                    "pk": {"S": event.id}, "envelope": {"S": event.to_json()}})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return time.process_time() - started


def worker_powertools(url: str, prefix: str, expected: int, tally: Tally) -> float:
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "bench")
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    from shared.events import Envelope

    session = _boto3_session(tally)
    sqs, dynamodb = session.client("sqs"), session.client("dynamodb")
    tables = _tables(prefix)
    persistence = DynamoDBPersistenceLayer(table_name=tables["idem"], key_attr="pk",
                                           boto3_client=dynamodb)
    config = IdempotencyConfig(event_key_jmespath="id", expires_after_seconds=7 * 86400)
    processor = BatchProcessor(event_type=EventType.SQS)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    dynamodb.describe_table(TableName=tables["state"])

    @idempotent_function(data_keyword_argument="envelope", config=config,
                         persistence_store=persistence)
    def apply(envelope: dict[str, Any]) -> dict[str, Any]:
        data = envelope["data"]
        updated = dynamodb.update_item(
            TableName=tables["state"], Key={"pk": {"S": data["device_id"]}},
            UpdateExpression="SET #l = :v ADD #c :one",
            ExpressionAttributeNames={"#l": "last", "#c": "count"},
            ExpressionAttributeValues={":v": {"N": str(data["value"])}, ":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW")
        count = int(updated["Attributes"]["count"]["N"])
        event = Envelope.new(
            ReadingRecorded(device_id=data["device_id"], value=data["value"], count=count),
            aggregate_id=data["device_id"], sequence=count)
        dynamodb.put_item(TableName=tables["outbox"], Item={
            "pk": {"S": event.id}, "envelope": {"S": event.to_json()}})
        return {"count": count}

    def record_handler(record: SQSRecord) -> None:
        apply(envelope=json.loads(record.body))

    tally.reset()
    started = time.process_time()
    done = 0
    while done < expected:
        page = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=WAIT_SECONDS, AttributeNames=["All"])
        messages = page.get("Messages", [])
        if not messages:
            continue
        event = {"Records": [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"], "attributes": m.get("Attributes", {}),
            "messageAttributes": {}, "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
            "eventSourceARN": arn, "awsRegion": "us-east-1",
        } for m in messages]}
        response = process_partial_response(event=event, record_handler=record_handler,
                                            processor=processor)
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                   for i, m in enumerate(messages) if m["MessageId"] not in failed]
        if entries:
            sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        done += len(messages)
    return time.process_time() - started


def worker_runtime(url: str, prefix: str, expected: int, tally: Tally, mode: str | None
                   ) -> float:
    import anyio
    from aiobotocore.session import get_session

    from shared.aws import AwsClients
    from shared.consumers import BatchResult, Message, Outcome, SqsConsumer, SqsSettings
    from shared.events import Envelope
    from shared.outbox import (
        Aggregate,
        BatchCommitter,
        BatchConfig,
        Decision,
        ItemRef,
        WriteMode,
    )

    table = _tables(prefix)["state"]

    def locate(envelope: Envelope) -> ItemRef:
        assert envelope.data is not None
        return ItemRef(table=table, key={"pk": envelope.data["device_id"]})

    def decide(envelope: Envelope, device: Aggregate) -> Decision:
        assert envelope.data is not None
        count = int(device.state.get("count", 0)) + 1
        value = envelope.data["value"]
        return Decision(
            state={"last": value, "count": count},
            events=[ReadingRecorded(device_id=envelope.data["device_id"], value=value,
                                    count=count)],
        )

    cpu: list[float] = []
    done_file = _done_file(prefix)

    async def main() -> None:
        session = get_session()
        events = session.get_component("event_emitter")
        events.register("before-parameter-build.dynamodb", tally.on_params)
        events.register("before-send.dynamodb.BatchExecuteStatement", tally.on_statements)
        provider = trace_to(os.environ.get("FLEETLINE_BENCH_SPANS"), "bench-worker")
        async with AwsClients(session=session) as aws:
            # Warm up: clients are made once per process, before the measured loop.
            await (await aws.client("dynamodb")).describe_table(TableName=table)
            await (await aws.client("sqs")).get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"])
            tally.reset()
            aws.counter.reset()
            committer = BatchCommitter(aws, locate=locate, decide=decide, config=BatchConfig(
                write_mode=WriteMode(mode or WriteMode.STATEMENTS)))
            consumer: SqsConsumer | None = None

            async def handler(messages: Sequence[Message]) -> BatchResult:
                if mode is None:
                    return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})
                return await committer(messages)

            async def stop_when_drained() -> None:
                # A RETRY comes back after its backoff, so counting outcomes cannot tell when
                # all is done: the producer says so (queue empty) by creating `done_file`.
                while not done_file.exists():  # noqa: ASYNC110 - a cheap file poll
                    await anyio.sleep(0.2)
                assert consumer is not None
                consumer.stop(drain_seconds=10)

            batch_handler: Any = handler
            consumer = SqsConsumer(aws, url, batch_handler, settings=SqsSettings(
                wait_time_seconds=WAIT_SECONDS))
            started = time.process_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_drained)
                await consumer.run()
            if provider is not None:  # every span exported before the figure is taken
                provider.force_flush()
            cpu.append(time.process_time() - started)
            tally.requests.update(aws.counter.snapshot())

    anyio.run(main)
    return cpu[0]


def run_worker(args: argparse.Namespace) -> None:
    tally = Tally()
    variant = args.worker
    print("ready", flush=True)
    wall = time.monotonic()
    if variant == "floor":
        cpu = worker_floor(args.queue_url, args.prefix, args.expected, tally)
    elif variant == "naive":
        cpu = worker_naive(args.queue_url, args.prefix, args.expected, tally)
    elif variant == "powertools":
        cpu = worker_powertools(args.queue_url, args.prefix, args.expected, tally)
    elif variant in _MODES:
        cpu = worker_runtime(args.queue_url, args.prefix, args.expected, tally, _MODES[variant])
    else:
        raise SystemExit(f"unknown variant {variant}")
    wall = time.monotonic() - wall
    print(json.dumps({"cpu": cpu, "wall": wall, **tally.summary()}), flush=True)


# ------------------------------------------------------------------------------ parent


def _setup(boto: Any, prefix: str) -> str:
    dynamodb, sqs = boto.client("dynamodb"), boto.client("sqs")
    for name in _tables(prefix).values():
        dynamodb.create_table(
            TableName=name, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
    return str(sqs.create_queue(QueueName=f"{prefix}-queue",
                                Attributes={"VisibilityTimeout": "60"})["QueueUrl"])


def _bodies(messages: int, devices: int, duplicate_every: int, seed: int) -> list[str]:
    from shared.events import Envelope

    rng = random.Random(seed)
    bodies: list[str] = []
    for i in range(messages):
        device = f"dev-{i % devices:04d}"
        envelope = Envelope.new(DeviceReported(device_id=device, value=round(rng.random(), 3)),
                                aggregate_id=device, sequence=i // devices + 1)
        bodies.append(envelope.to_json())
        if duplicate_every and (i + 1) % duplicate_every == 0:
            bodies.append(bodies[rng.randrange(len(bodies))])  # a second delivery
    return bodies


def _produce(boto: Any, url: str, bodies: list[str], *, wave: int = 100, low: int = 40,
             worker: subprocess.Popen[str]) -> None:
    sqs = boto.client("sqs")
    for start in range(0, len(bodies), wave):
        while True:
            if worker.poll() is not None:
                raise SystemExit("the worker exited early")
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])[
                "Attributes"]
            depth = int(attrs["ApproximateNumberOfMessages"]) + int(
                attrs["ApproximateNumberOfMessagesNotVisible"])
            if depth <= low:
                break
            time.sleep(0.05)
        chunk = bodies[start:start + wave]
        for offset in range(0, len(chunk), 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(j), "MessageBody": body}
                for j, body in enumerate(chunk[offset:offset + 10])])


def _wait_until_empty(boto: Any, url: str, worker: subprocess.Popen[str]) -> None:
    """Until nothing is left in the queue (visible, in flight or delayed), twice in a row."""
    sqs = boto.client("sqs")
    empty = 0
    while empty < 2:
        if worker.poll() is not None:
            raise SystemExit("the worker exited early")
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        depth = sum(int(attrs.get(name, 0)) for name in (
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"))
        empty = empty + 1 if depth == 0 else 0
        time.sleep(0.5)


def _measure_tables(boto: Any, prefix: str) -> tuple[int, int]:
    """(largest item in bytes, sum of device counters) over the variant's tables."""
    dynamodb = boto.client("dynamodb")
    largest = 0
    total = 0
    for role, name in _tables(prefix).items():
        for page in dynamodb.get_paginator("scan").paginate(TableName=name):
            for item in page["Items"]:
                largest = max(largest, item_size(item))
                if role == "state" and "count" in item:
                    total += int(item["count"]["N"])
    return largest, total


def run_variant(boto: Any, variant: str, bodies: list[str], distinct: int,
                endpoint: str, *, round_number: int = 0,
                spans_url: str | None = None) -> dict[str, Any]:
    prefix = f"bench-{variant}" + (f"-{round_number}" if round_number else "")
    _done_file(prefix).unlink(missing_ok=True)
    url = _setup(boto, prefix)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    env.pop("FLEETLINE_BENCH_SPANS", None)
    if variant in _TRACED:
        env["FLEETLINE_BENCH_SPANS"] = spans_url or ""
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--queue-url", url,
         "--prefix", prefix, "--expected", str(len(bodies))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit(f"{variant}: worker did not start")
    _produce(boto, url, bodies, worker=worker)
    if variant in _MODES:
        _wait_until_empty(boto, url, worker)
        _done_file(prefix).touch()
    output = worker.stdout.read()
    _done_file(prefix).unlink(missing_ok=True)
    if worker.wait(timeout=120) != 0:
        raise SystemExit(f"{variant}: worker failed")
    lines = [line for line in output.splitlines() if line.startswith('{"cpu"')]
    if not lines:
        raise SystemExit(f"{variant}: no figures from the worker:\n{output[-2000:]}")
    stats = json.loads(lines[-1])
    stats["log_lines"] = len(output.splitlines()) - 1
    largest, total = _measure_tables(boto, prefix)
    stats["largest_item"] = largest
    stats["effects_ok"] = variant in _NO_EFFECT or total == distinct
    stats["applied"] = total
    return stats


def figures(stats: dict[str, Any], messages: int) -> dict[str, float]:
    requests = sum(stats["requests"].values())
    sqs_requests = sum(v for k, v in stats["requests"].items() if k.startswith("sqs."))
    units = units_per_write(stats["largest_item"])
    wru = (stats["standard_writes"] + 2 * stats["transactional_writes"]) * units
    rru = stats["read_units"]
    per_million = 1_000_000 / messages
    return {
        "cpu_us": stats["cpu"] / messages * 1e6,
        "requests_per_1000": requests / messages * 1000,
        "wru_per_message": wru / messages,
        "rru_per_message": rru / messages,
        "dollars_per_million": dollars(
            wru=wru * per_million, rru=rru * per_million,
            sqs_requests=sqs_requests * per_million,
            cpu_seconds=stats["cpu"] * per_million),
        "messages_per_second": messages / stats["wall"] if stats["wall"] else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--duplicate-every", type=int, default=50)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every variant this many times, in turn; each row is the "
                             "round with the median CPU (CPU moves with the machine's load, "
                             "requests and units do not)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--queue-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    if args.worker:
        run_worker(args)
        return

    import boto3
    from rich.console import Console
    from rich.table import Table

    from shared.emulator import Emulator

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant}; choose from {', '.join(VARIANTS)}")
    bodies = _bodies(args.messages, args.devices, args.duplicate_every, args.seed)
    distinct = len(set(bodies))
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    console = Console(width=150)
    rounds: dict[str, list[tuple[dict[str, float], dict[str, Any]]]] = {v: [] for v in variants}
    with Emulator() as emulator, SpanSink() as spans:
        os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint_url
        boto = boto3.Session()
        for number in range(args.rounds):
            for variant in variants:
                console.print(f"[dim]running {variant} ({len(bodies)} messages, round "
                              f"{number + 1} of {args.rounds})...[/dim]")
                stats = run_variant(boto, variant, bodies, distinct, emulator.endpoint_url,
                                    round_number=number, spans_url=spans.url)
                rounds[variant].append((figures(stats, len(bodies)), stats))
    results: dict[str, dict[str, float]] = {}
    raw: dict[str, dict[str, Any]] = {}
    for variant, runs in rounds.items():
        ordered = sorted(runs, key=lambda run: run[0]["cpu_us"])
        results[variant], raw[variant] = ordered[(len(ordered) - 1) // 2]
        raw[variant]["effects_ok"] = all(stats["effects_ok"] for _, stats in runs)
    table = Table(title=f"consume + apply once: {len(bodies)} messages "
                        f"({len(bodies) - distinct} duplicates), {args.devices} devices")
    for column in ("variant", "CPU us/msg", "requests/1k msgs", "WRU/msg", "RRU/msg",
                   "$/M msgs", "msgs/s", "largest item B", "applied once"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, row in results.items():
        table.add_row(
            variant, f"{row['cpu_us']:,.0f}", f"{row['requests_per_1000']:,.0f}",
            f"{row['wru_per_message']:.2f}", f"{row['rru_per_message']:.2f}",
            f"{row['dollars_per_million']:.3f}", f"{row['messages_per_second']:.0f}",
            str(raw[variant]["largest_item"]),
            "-" if variant in _NO_EFFECT else
            "yes" if raw[variant]["effects_ok"] else f"NO ({raw[variant]['applied']})",
        )
    console.print(table)
    if "runtime" in results and "runtime-traced" in results:
        traced = results["runtime-traced"]["cpu_us"] - results["runtime"]["cpu_us"]
        console.print(f"tracing on (SDK, a CONSUMER span per message, OTLP export): "
                      f"{traced:+,.0f} us/msg of worker CPU over tracing off, same run "
                      f"({spans.requests} OTLP requests, {spans.bytes:,} bytes)")
    if "runtime" in results:
        ours = results["runtime"]
        line = (f"runtime (the default path): {ours['cpu_us']:,.0f} us/msg, "
                f"{ours['wru_per_message']:.2f} WRU/msg")
        if "powertools" in results:
            base = results["powertools"]
            line += (f"; / powertools: CPU {ours['cpu_us'] / base['cpu_us']:.0%}, "
                     f"dollars {ours['dollars_per_million'] / base['dollars_per_million']:.0%}")
        console.print(line + " (goal: at most 600 us and 1.0 WRU per message, dollars at "
                             "most 30 % of powertools')")
    for variant, stats in raw.items():
        console.print(f"[dim]{variant}: {json.dumps(stats['requests'], sort_keys=True)}[/dim]")
    if args.rounds > 1:
        for variant, runs in rounds.items():
            cpus = ", ".join(f"{figs['cpu_us']:,.0f}" for figs, _ in runs)
            console.print(f"[dim]{variant}: CPU us/msg by round {cpus}[/dim]")
    if args.json:
        args.json.write_text(json.dumps({
            "figures": results, "raw": raw,
            "rounds": {v: [figs for figs, _ in runs] for v, runs in rounds.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
