"""A telemetry worker process killed (SIGKILL) mid-stream loses nothing and counts nothing
twice: its successor takes the expired leases, replays from the last checkpoint, and the
records whose state was already flushed are dropped as duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from services.devices.simulator import FleetConfig, FleetPlan, SimulationReport, put_records
from shared.aws import AwsClients
from tests.integration._devices_support import (
    DeviceResources,
    create_device_resources,
    device_docs,
    outbox_events,
    wait_for,
)

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

DEVICES = 100
SEQS = 10


def start_worker(res: DeviceResources, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(res.environ())
    # Every reading written with its device (`FLEETLINE_LAST_SEEN_INTERVAL` 0), so that
    # `received` and `seq` per device are in the table to count; transitions (the events
    # checked below) are written the same way in the default mode.
    env.update(FLEETLINE_RESIDENCY_ZONE="eu", FLEETLINE_LEASE_DURATION="2",
               FLEETLINE_LAST_SEEN_INTERVAL="0",
               FLEETLINE_IDLE_BACKOFF="0.1", FLEETLINE_STREAM_LIMIT="100")
    # The ECS command of the template, run by the runtime's host.
    command = [sys.executable, "-X", "faulthandler", "-m", "shared.hosts.worker",
               "services.devices.telemetry:worker"]
    return subprocess.Popen(command, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


LOGS = Path(__file__).resolve().parents[1] / "artifacts"


async def test_killed_worker_loses_nothing_and_double_counts_nothing(aws: AwsClients) -> None:
    logs = LOGS
    res = await create_device_resources(aws, prefix="restart", shards=2)
    plan = FleetPlan(FleetConfig(devices=DEVICES, eu_share=1.0, alarm_rate=0.0), start=0)
    kinesis = await aws.client("kinesis")
    records = [r for _ in range(SEQS) for r in plan.next_batch(DEVICES, now=1.0)]
    await put_records(kinesis, res.stream, records, SimulationReport())

    first = start_worker(res, logs / "devices-restart-first.log")
    try:
        async def some_written() -> int:
            docs = await device_docs(aws, res.devices_table)
            return sum(d["seq"] for d in docs.values())

        progress = await wait_for(some_written, within=60, interval=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert progress < DEVICES * SEQS, "the first worker finished before it could be killed"

    second = start_worker(res, logs / "devices-restart-second.log")
    try:
        async def all_done() -> bool:
            docs = await device_docs(aws, res.devices_table)
            return len(docs) == DEVICES and all(d["seq"] == SEQS for d in docs.values())

        await wait_for(all_done, within=40, interval=0.3)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            status = second.wait(timeout=15)
        except subprocess.TimeoutExpired:
            second.kill()
            raise
    assert status == 0  # SIGTERM: drained, leases handed back, exit 0

    docs = await device_docs(aws, res.devices_table)
    assert {d["received"] for d in docs.values()} == {SEQS}  # nothing counted twice
    events = await outbox_events(aws, res.devices_stream_arn)
    per_type = Counter(e["type"] for e in events)
    assert per_type["DeviceConnected"] == DEVICES  # once per device, across both processes
    assert per_type["FirmwareVersionReported"] == DEVICES
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    log = (logs / "devices-restart-second.log").read_text()
    assert "lease taken" in log
