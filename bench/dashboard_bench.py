"""Dashboard benchmark: readings from the telemetry stream to the screen (issue 14).

    .venv/bin/python -m bench.dashboard_bench                  # defaults below
    .venv/bin/python -m bench.dashboard_bench --rate 1000 --seconds 30 --json out.json

What is measured (docs/benchmarks.md has the figures):

1. Push latency, end to end on the emulator. A stream of `--shards` shards; a dashboard
   (the real `Hub`, `DashboardServer`, fan-out reader through its own enhanced fan-out
   consumer, pushes every 0.1 s) runs in a child process, as a task would; this process
   puts readings of `--devices` devices of one tenant at `--rate` a second for `--seconds`
   (PutRecords of 100, round-robin over the devices, each record's `ts` the time of its
   put) and one SSE viewer watches 200 of them (a page on screen, `/api/watch`).
   Latency = arrival of the device's reading at the viewer - its `ts`; CPU = user + system
   of the dashboard process per reading put (it parses every record of the stream: its
   cost is per reading, not per viewer); bytes per viewer per second of the SSE stream.
   Baseline, same run, its own child: every reading of the tenant pushed to the viewer as
   it is applied, the way device events are pushed (`Hub.publish`), no watch, no coalescing.
2. In memory, no I/O: the view's memory at `--memory-devices` devices (RSS of a child
   process before and after), CPU per reading of `Hub.apply_readings` at that size, and a
   page (50 devices) and a search of the fleet view at 10,000 and 100,000 devices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TENANT = "t-bench"
STREAM = "dashboard-bench"
WATCHED = 200
SECRET = "bench-dashboard-secret"  # signs the viewer's token (child and parent)
PAGE_SIZE = 4096


def _record(device: int, seq: int) -> dict[str, Any]:
    body = {"kind": "telemetry", "device_id": f"dev-{device:07d}", "tenant_id": TENANT,
            "zone": "eu", "seq": seq, "ts": time.time(),
            "readings": {"temperature": 20.0 + (seq % 50) / 10, "humidity": 40.0 + device % 7,
                         "battery": 90.0}}
    return {"Data": json.dumps(body, separators=(",", ":")).encode(),
            "PartitionKey": body["device_id"]}


def _json_line(stream: Any) -> dict[str, Any]:
    """The next JSON object line of a child's stdout (its log lines are skipped)."""
    while True:
        line = stream.readline()
        if not line:
            raise RuntimeError("the dashboard child ended")
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the dashboard child


async def _serve(endpoint: str, unthrottled: bool) -> None:
    import anyio

    from services.devices.dashboard import DashboardServer, Hub
    from shared.aws import AwsClients, ClientSettings
    from shared.consumers import Message
    from shared.consumers.kinesis import KinesisFanOut, fan_out_consumer, stream_arn

    hub = Hub()

    def on_records(shard_id: str, messages: Sequence[Message]) -> None:
        hub.apply_readings(shard_id, messages)
        if unthrottled:  # the baseline: each reading to every viewer of the tenant, at once
            for message in messages:
                body = json.loads(message.body)
                held = hub.readings.get(TENANT, body["device_id"])
                if held is not None:
                    hub.publish(TENANT, "reading", held.to_json(body["device_id"]))

    server = DashboardServer(hub, None, secret=SECRET)
    async with AwsClients(ClientSettings(endpoint_url=endpoint)) as aws:
        arn = await stream_arn(aws, STREAM)
        name = "bench-unthrottled" if unthrottled else "bench"
        async with fan_out_consumer(aws, arn, name=name) as consumer, \
                anyio.create_task_group() as tg:
            await tg.start(KinesisFanOut(aws, consumer, on_records=on_records).run)
            if not unthrottled:
                await tg.start(hub.run_pushes)
            base = await server.start(port=0)
            print(json.dumps({"base": base}), flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent says stop
            print(json.dumps({"applied": hub.readings.applied,
                              "dropped_viewers": hub.dropped_viewers}), flush=True)
            tg.cancel_scope.cancel()
        await server.stop()


# --------------------------------------------------------------------------- the parent


async def _viewer(base: str, token: str, arrivals: list[float], counters: dict[str, float],
                  watched: list[str], ready: asyncio.Event, stop: asyncio.Event) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, \
            session.get(f"{base}/events", params={"token": token}) as response:
        buffer = b""
        viewer_id = None
        async for chunk in response.content.iter_any():
            counters["bytes"] += len(chunk)
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                lines = frame.decode().split("\n")
                kind = lines[0].removeprefix("event: ")
                data = json.loads(lines[1].removeprefix("data: ")) if len(lines) > 1 else {}
                now = time.time()
                if kind == "snapshot":
                    viewer_id = data["viewer_id"]
                    if watched:
                        await session.post(f"{base}/api/watch", params={"token": token},
                                           json={"viewer": viewer_id, "devices": watched})
                    ready.set()
                elif kind == "readings" and not stop.is_set():
                    for device in data["devices"]:
                        if device["arrival"] >= counters["since"]:
                            arrivals.append(now - device["ts"])
                            counters["devices"] += 1
                elif (kind == "reading" and not stop.is_set()
                      and data["arrival"] >= counters["since"]):
                    arrivals.append(now - data["ts"])
                    counters["devices"] += 1
            if stop.is_set():
                return


def _spawn(endpoint: str, unthrottled: bool) -> tuple[subprocess.Popen[str], str]:
    """The dashboard child and its base URL."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.dashboard_bench", "--serve", endpoint]
        + (["--unthrottled"] if unthrottled else []),
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child, str(_json_line(child.stdout)["base"])


def _stop(child: subprocess.Popen[str]) -> dict[str, Any]:
    """Ask the child to stop; what it reports."""
    assert child.stdin is not None
    child.stdin.write("stop\n")
    child.stdin.flush()
    final = _json_line(child.stdout)
    child.wait(timeout=30)
    return final


async def _phase(endpoint: str, args: argparse.Namespace, *, unthrottled: bool) -> dict[str, Any]:
    from services.devices.dashboard import issue_token
    from shared.aws import AwsClients, ClientSettings

    child, base = await asyncio.to_thread(_spawn, endpoint, unthrottled)
    try:
        latencies: list[float] = []
        counters: dict[str, float] = {"bytes": 0, "devices": 0, "since": time.time() + 1e9}
        ready, stop = asyncio.Event(), asyncio.Event()
        token = issue_token(TENANT, secret=SECRET)
        step = max(1, args.devices // WATCHED)  # a page's devices, spread over the puts
        watched = [f"dev-{i:07d}" for i in range(0, args.devices, step)][:WATCHED]
        viewer = asyncio.create_task(
            _viewer(base, token, latencies, counters, [] if unthrottled else watched, ready,
                    stop))
        await asyncio.wait_for(ready.wait(), timeout=30)
        async with AwsClients(ClientSettings(endpoint_url=endpoint)) as aws:
            kinesis = await aws.client("kinesis")
            await asyncio.sleep(1.0)
            cpu_before = _cpu_seconds(child.pid)
            bytes_before = counters["bytes"]
            started = time.time()
            counters["since"] = started
            put = 0
            seq = 1
            batch = 100
            while time.time() - started < args.seconds:
                due = int((time.time() - started) * args.rate)
                while put < due:
                    records = [_record((put + i) % args.devices, seq + (put + i) // args.devices)
                               for i in range(batch)]
                    await kinesis.put_records(StreamName=STREAM, Records=records)
                    put += batch
                await asyncio.sleep(0.01)
            elapsed = time.time() - started
            await asyncio.sleep(2.0)  # the last puts reach the viewer
            cpu = _cpu_seconds(child.pid) - cpu_before
            received = counters["bytes"] - bytes_before
        stop.set()
        viewer.cancel()
        final = await asyncio.to_thread(_stop, child)
    finally:
        if child.poll() is None:
            child.kill()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0

    return {
        "mode": "unthrottled (every reading pushed)" if unthrottled else
                "watched page, <= 1/s per device",
        "readings_put": put, "put_per_second": round(put / elapsed),
        "readings_applied": final["applied"],
        "latency_samples": len(latencies),
        "latency_p50_ms": round(pct(0.5) * 1000), "latency_p99_ms": round(pct(0.99) * 1000),
        "latency_max_ms": round(latencies[-1] * 1000) if latencies else None,
        "cpu_us_per_reading": round(cpu / max(1, put) * 1e6, 1),
        "dashboard_cpu_share": round(cpu / elapsed, 3),
        "viewer_bytes_per_second": round(received / (elapsed + 2.0)),
        "viewer_devices_per_second": round(counters["devices"] / elapsed, 1),
        "dropped_viewers": final["dropped_viewers"],
    }


async def _end_to_end(args: argparse.Namespace) -> list[dict[str, Any]]:
    from shared.aws import AwsClients, ClientSettings
    from shared.emulator import Emulator

    with Emulator() as emulator:
        async with AwsClients(ClientSettings(endpoint_url=emulator.endpoint_url)) as aws:
            kinesis = await aws.client("kinesis")
            await kinesis.create_stream(StreamName=STREAM, ShardCount=args.shards)
        return [await _phase(emulator.endpoint_url, args, unthrottled=False),
                await _phase(emulator.endpoint_url, args, unthrottled=True)]


def _in_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Run in a child (`--memory`): RSS growth is this process's alone."""
    done = subprocess.run([sys.executable, "-m", "bench.dashboard_bench", "--memory",
                           "--memory-devices", str(args.memory_devices)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(devices: int) -> None:
    import gc

    from services.devices.dashboard import FleetView, Hub
    from shared.consumers import Message, SourceKind

    def message(device: int, seq: int) -> Message:
        return Message(id=str(seq), body=_record(device, seq)["Data"].decode(),
                       source=SourceKind.KINESIS, source_name=STREAM)

    out: dict[str, Any] = {}
    gc.collect()
    hub = Hub()
    before = _rss()
    chunk = 1_000
    for start in range(0, devices, chunk):
        hub.apply_readings("s", [message(d, 1) for d in range(start, start + chunk)])
    gc.collect()
    out["memory_devices"] = devices
    out["memory_mb"] = round((_rss() - before) / 2**20, 1)
    out["bytes_per_device"] = round((_rss() - before) / devices)
    # CPU per reading at that size: 20,000 more readings (every device already held)
    batches = [[message(d, 2) for d in range(b, b + 500)] for b in range(0, 20_000, 500)]
    started = time.process_time()
    for batch in batches:
        hub.apply_readings("s", batch)
    out["apply_us_per_reading"] = round((time.process_time() - started) / 20_000 * 1e6, 2)
    for size in (10_000, 100_000):
        fleet = FleetView(TENANT)
        for i in range(size):
            fleet.apply({"device_id": f"dev-{i:07d}", "status": "online" if i % 4 else
                         "offline"}, sequence=1)
        fleet.page(limit=50)  # the sorted ids, made once
        timings: dict[str, list[float]] = {"page": [], "search": [], "status": []}
        for i in range(20):
            t = time.perf_counter()
            fleet.page(limit=50, cursor=f"dev-{(i * 997) % size:07d}")
            timings["page"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fleet.page(limit=50, search=f"{i:02d}7")
            timings["search"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fleet.page(limit=50, status="offline", cursor=f"dev-{(i * 997) % size:07d}")
            timings["status"].append(time.perf_counter() - t)
        for kind, values in timings.items():
            out[f"{kind}_ms_at_{size}"] = round(statistics.median(values) * 1000, 2)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1_000, help="readings put per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--memory-devices", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--unthrottled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    if args.serve:
        import anyio
        anyio.run(_serve, args.serve, args.unthrottled)
        return
    if args.memory:
        _memory_child(args.memory_devices)
        return
    results = {"end_to_end": asyncio.run(_end_to_end(args)), "in_memory": _in_memory(args),
               "settings": {k: v for k, v in vars(args).items()
                            if k in ("devices", "rate", "seconds", "shards")}}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
