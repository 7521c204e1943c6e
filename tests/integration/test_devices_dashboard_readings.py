"""The dashboard task's readings path on the emulator, as the worker host runs it: the
lifespan registers a fan-out consumer of its own on the telemetry stream, a viewer that
watches a device gets its readings over SSE, and the consumer is gone after the stop; a
task's sweep deregisters the consumers of dead tasks (their queue gone) and no other."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from services.devices._auth import DEV_SECRET, issue_token
from services.devices.dashboard import DashboardFeed, FeedConfig, remove_dead_readers
from services.devices.dashboard import dashboard_lifespan as lifespan
from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import SqsSettings
from shared.consumers.kinesis import list_fan_out_consumers, stream_arn
from shared.emulator import free_port
from tests.integration.test_devices_read_model import create_read_model

pytestmark = pytest.mark.emulator

PREFIX = "readings-dashboard-task-"


async def sse_frames(response: aiohttp.ClientResponse
                     ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            lines = frame.decode().split("\n")
            if lines[0].startswith("event: "):
                yield lines[0][len("event: "):], json.loads(lines[1][len("data: "):])


async def test_a_task_pushes_readings_of_the_telemetry_stream_to_its_viewer(
        aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> None:
    kinesis = await aws.client("kinesis")
    sns = await aws.client("sns")
    await kinesis.create_stream(StreamName="readings-telemetry", ShardCount=2)
    await create_read_model(aws, "readings-read-model")
    topic = (await sns.create_topic(Name="readings-feed"))["TopicArn"]
    port = free_port()
    monkeypatch.setenv("FLEETLINE_DASHBOARD_QUEUE_PREFIX", PREFIX)
    monkeypatch.setenv("FLEETLINE_DASHBOARD_PORT", str(port))
    resources = Resources({"FLEETLINE_DASHBOARD_FEED_TOPIC": topic,
                           "FLEETLINE_DEVICE_READ_MODEL_TABLE": "readings-read-model",
                           "FLEETLINE_TELEMETRY_STREAM": "readings-telemetry"})
    arn = await stream_arn(aws, "readings-telemetry")
    token = issue_token("t-read", secret=DEV_SECRET)
    feed = DashboardFeed(SqsSettings(wait_time_seconds=1))
    async with lifespan(aws, resources, feed=feed), aiohttp.ClientSession() as session:
        (consumer,) = await list_fan_out_consumers(aws, arn)
        assert consumer.name.startswith(PREFIX)  # named after the task's feed queue
        base = f"http://127.0.0.1:{port}"
        async with session.get(f"{base}/events", params={"token": token}) as response:
            frames = sse_frames(response)
            kind, snapshot = await anext(frames)
            assert kind == "snapshot"
            watched = await session.post(f"{base}/api/watch", params={"token": token}, json={
                "viewer": snapshot["viewer_id"], "devices": ["dev-r1"]})
            assert await watched.json() == {"watched": 1}
            other = await session.post(
                f"{base}/api/watch", params={"token": issue_token("t-other", secret=DEV_SECRET)},
                json={"viewer": snapshot["viewer_id"], "devices": ["dev-r1"]})
            assert other.status == 404  # another tenant cannot use this viewer
            put_at = time.time()
            await kinesis.put_records(StreamName="readings-telemetry", Records=[
                {"Data": json.dumps({"kind": "telemetry", "device_id": f"dev-r{i}",
                                     "tenant_id": "t-read", "zone": "eu", "seq": 1,
                                     "ts": put_at, "readings": {"temperature": 20.0 + i}}
                                    ).encode(), "PartitionKey": f"dev-r{i}"}
                for i in range(1, 6)])
            data: dict[str, Any] = {}
            with anyio.fail_after(10):
                async for kind, frame in frames:
                    if kind == "readings":
                        data = frame
                        break
            assert [d["device_id"] for d in data["devices"]] == ["dev-r1"]  # only the watched
            assert data["devices"][0]["readings"] == {"temperature": 21.0}
            assert time.time() - put_at < 5.0
    assert await list_fan_out_consumers(aws, arn) == []  # deregistered on stop


async def test_the_sweep_removes_the_readers_of_dead_tasks_only(aws: AwsClients) -> None:
    kinesis = await aws.client("kinesis")
    sqs = await aws.client("sqs")
    await kinesis.create_stream(StreamName="readings-sweep", ShardCount=1)
    arn = await stream_arn(aws, "readings-sweep")
    config = FeedConfig(topic_arn="arn:aws:sns:us-east-1:123456789012:unused",
                        queue_prefix=PREFIX, task_id="mine")
    await sqs.create_queue(QueueName=f"{PREFIX}alive")
    for name in (f"{PREFIX}mine", f"{PREFIX}alive", f"{PREFIX}dead", "someone-else"):
        await kinesis.register_stream_consumer(StreamARN=arn, ConsumerName=name)
    assert await remove_dead_readers(aws, arn, config) == [f"{PREFIX}dead"]
    assert sorted(c.name for c in await list_fan_out_consumers(aws, arn)) == [
        f"{PREFIX}alive", f"{PREFIX}mine", "someone-else"]
