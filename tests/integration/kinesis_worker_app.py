"""A Kinesis worker for `python -m shared.hosts.worker tests.integration.kinesis_worker_app:worker`,
used by test_kinesis_consumer.py: each record's body is how long its handler takes (seconds);
the handler writes `start <seq>` / `done <seq>` lines to FLEETLINE_TEST_LEDGER."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import BatchHandler, BatchResult, Message, Outcome
from shared.hosts import KinesisStream, Worker


def _ledger(line: str) -> None:
    with open(os.environ["FLEETLINE_TEST_LEDGER"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def handle(batch: Sequence[Message]) -> BatchResult:
    for message in batch:
        _ledger(f"start {message.sequence}")
        await anyio.sleep(float(message.body))
        _ledger(f"done {message.sequence}")
    return BatchResult({m.id: Outcome.SUCCEEDED for m in batch})


def build(aws: AwsClients, resources: Resources) -> BatchHandler:
    return handle


worker = Worker(
    name="kinesis-shutdown-test",
    source=KinesisStream(
        "ShutdownStream", lease_table="ShutdownLeases",
        options={"lease_duration": 1.5, "renew_interval": 0.3, "take_interval": 0.3,
                 "idle_backoff": 0.1},
    ),
    handler=build,
)
