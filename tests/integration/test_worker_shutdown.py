"""SIGTERM during a batch, on a real worker process (`python -m shared.hosts.worker`): what
can finish within the drain finishes and is deleted, what cannot is released at once, the
process exits 0, and nothing is lost."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import BatchResult, Message, Outcome, create_lease_table
from shared.hosts import KinesisStream, Worker, serve
from tests.integration.test_sqs_consumer import drain_queue, make_queue, send

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parents[2]


def _ledger(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_sigterm_mid_batch_finishes_or_releases_and_exits_zero(
    aws: AwsClients, tmp_path: Path
) -> None:
    # A 30 s visibility timeout: a message back on the queue during the test was released,
    # not merely expired.
    url, _ = await make_queue(aws, "shutdown", visibility=30, max_receive_count=5)
    durations = {**{n: 0.05 for n in range(6)}, 6: 1.0, 7: 1.0, 8: 30.0, 9: 30.0}
    await send(aws, url, [json.dumps({"n": n, "seconds": s}) for n, s in durations.items()])
    ledger = tmp_path / "ledger.txt"
    env = {
        **os.environ,
        "FLEETLINE_SHUTDOWN_QUEUE": url,
        "FLEETLINE_DRAIN_SECONDS": "3",
        "FLEETLINE_TEST_LEDGER": str(ledger),
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(  # noqa: ASYNC220 - polled below without blocking the loop
        [sys.executable, "-m", "shared.hosts.worker", "tests.integration.worker_app:worker"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # every handler started, the fast ones done: mid-batch
            lines = _ledger(ledger)
            starts = {line for line in lines if line.startswith("start")}
            dones = {line for line in lines if line.startswith("done")}
            if len(starts) == 10 and len(dones) == 6:
                break
            assert process.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, f"worker never got mid-batch: {lines}"
            await anyio.sleep(0.05)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while process.poll() is None:
            assert time.monotonic() - signalled < 15, "worker did not exit after SIGTERM"
            await anyio.sleep(0.05)
        exit_seconds = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert process.returncode == 0, output
    assert exit_seconds < 3 + 5  # the drain, plus release and flush

    done = {int(line.split()[1]) for line in _ledger(ledger) if line.startswith("done")}
    assert done == {0, 1, 2, 3, 4, 5, 6, 7}  # in-flight work that fit the drain finished
    # Released with visibility 0: back on the queue now, despite the 30 s timeout.
    again = await drain_queue(aws, url, wait=1)
    back = sorted(json.loads(m["Body"])["n"] for m in again)
    assert back == [8, 9]
    # Nothing lost, nothing kept twice: every message is either done (and deleted) or back.
    assert done.isdisjoint(back)
    assert done | set(back) == set(durations)
    assert "draining" in output
    assert "worker stopped" in output


async def test_serve_runs_a_stream_worker_and_returns_on_stop(aws: AwsClients) -> None:
    """The same host with a Kinesis source: records reach the handler; a stop request
    drains and `serve` returns (the stream consumer hands its lease back)."""
    kinesis = await aws.client("kinesis")
    await kinesis.create_stream(StreamName="host-stream", ShardCount=1)
    await create_lease_table(aws, "host-leases")
    handled: list[int] = []
    all_handled = anyio.Event()

    async def handler(messages: Sequence[Message]) -> BatchResult:
        handled.extend(json.loads(m.body)["n"] for m in messages)
        if len(handled) >= 5:
            all_handled.set()
        return BatchResult({m.id: Outcome.SUCCEEDED for m in messages})

    worker = Worker(
        name="host-test",
        source=KinesisStream("host-stream", lease_table="host-leases",
                             options={"idle_backoff": 0.2, "lease_duration": 3.0}),
        handler=lambda aws, resources: handler,
    )
    await kinesis.put_records(StreamName="host-stream", Records=[
        {"Data": json.dumps({"n": n}).encode(), "PartitionKey": f"k{n}"} for n in range(5)])
    stop = anyio.Event()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(
                serve, worker, resources=Resources({}), drain_seconds=2.0, stop=stop,
                signals=()))
            await all_handled.wait()
            stop.set()
    assert sorted(handled) == [0, 1, 2, 3, 4]
    leases = await (await aws.client("dynamodb")).scan(TableName="host-leases")
    owners = [item.get("owner", {}).get("S") for item in leases["Items"]
              if "checkpoint" in item]
    assert owners
    assert all(not owner for owner in owners)  # handed back on shutdown


LAMBDA_PROCESS = """
from shared.hosts.lambda_ import LambdaRuntime

async def call(aws):
    sqs = await aws.client("sqs")
    return await sqs.list_queues()

LambdaRuntime().run(call)
print("called")
"""


async def test_a_process_that_ran_a_lambda_exits_with_its_clients_closed(
    aws: AwsClients,
) -> None:
    """The local API and trigger processes run functions on a `LambdaRuntime`, whose clients
    stay open for the container's life; on exit they are closed, not reported by asyncio as
    "Unclosed client session" (an error line in the process's log after every stop)."""
    child = await anyio.run_process(
        [sys.executable, "-c", LAMBDA_PROCESS], cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    stderr = child.stderr.decode()
    assert child.returncode == 0, stderr
    assert child.stdout.decode().strip() == "called"
    assert "Unclosed" not in stderr, stderr
