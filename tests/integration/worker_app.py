"""A worker for `python -m shared.hosts.worker tests.integration.worker_app:worker`, used by
test_worker_shutdown.py: each message's body says how long its handler takes; the handler
writes `start <n>` and `done <n>` lines to the ledger file named by FLEETLINE_TEST_LEDGER."""

from __future__ import annotations

import os
from typing import Any

import anyio

from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import BatchHandler, HandlerContext, SqsSettings, batch_handler
from shared.hosts import SqsQueue, Worker


def _ledger(line: str) -> None:
    with open(os.environ["FLEETLINE_TEST_LEDGER"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def handle(event: dict[str, Any], ctx: HandlerContext) -> None:
    _ledger(f"start {event['n']}")
    await anyio.sleep(float(event["seconds"]))
    _ledger(f"done {event['n']}")


def build(aws: AwsClients, resources: Resources) -> BatchHandler:
    return batch_handler(handle)


worker = Worker(
    name="shutdown-test",
    source=SqsQueue("ShutdownQueue", settings=SqsSettings(wait_time_seconds=1)),
    handler=build,
)
