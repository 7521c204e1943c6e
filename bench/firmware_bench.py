"""Firmware benchmark: a rollout end to end on the embedded stack, what it costs per device,
and the same projected to a million devices beside the reference design.

    .venv/bin/python bench/firmware_bench.py [--devices 10000] [--reference 1000]
        [--plan 1000000] [--json FILE]

Three parts, in one run:

1. Our design, end to end: its own emulator (moto server), the firmware resources through
   the API and the real rollout workflow (`services.firmware.harness`), the tasks and acks
   workers each in a process of its own (their CPU time and AWS requests are the figures),
   the local map-runs process standing in for Step Functions' Distributed Map, and a fleet
   of `--devices` devices (in this process) taking the IoT jobs and answering on the acks
   stream. Reports the wall time per wave, state transitions (states entered, the parent and
   every batch child, from execution histories), AWS requests per device and worker CPU per
   device.
2. The reference design (the seed's): a Distributed Map over the devices without batching,
   each child a command step (a Pass stands in for its per-device Lambda: the emulator cannot
   invoke Lambdas), a callback token per device, and an end: run over `--reference` devices,
   its transitions counted from the histories the same way.
3. Planning `--plan` devices into wave manifests (in the emulator's S3) from a synthetic
   read model, in a process of its own: wall time and peak RSS.

Both designs are projected to 1,000,000 devices in dollars at the list prices of
bench/prices.py (transitions $0.025 per 1,000). Goals (issue 11): at most 5,000 transitions
per million-device rollout (~$0.13); at most 100 us of worker CPU per device; planning a
million devices in under 60 s with under 300 MB of memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio
import anyio.lowlevel
from rich.console import Console
from rich.table import Table

from bench.prices import PRICES
from services.devices.firmware_agent import UpdateFaults
from services.firmware.domain import RolloutSpec, wave_sizes
from services.firmware.harness import (
    REPORT_ENV,
    STACK_ENV,
    FirmwareStack,
    Fleet,
    create_stack,
    runtime,
)
from services.firmware.planner import ManifestWriter, TargetDevice, plan_rollout
from services.firmware.service import FirmwareService
from services.firmware.workflow import WorkflowTimings
from shared.aws import AwsClients
from shared.emulator import Emulator
from shared.local import state_transitions
from shared.logging import configure_logging

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = WorkflowTimings(beat_seconds=5, heartbeat_seconds=30, plan_heartbeat_seconds=120,
                          retry_interval_seconds=1)
CANARY, GROWTH = 100, 4.0
console = Console(stderr=True)


# --------------------------------------------------------------------------- our design


async def our_design(aws: AwsClients, endpoint: str, devices: int) -> dict[str, Any]:
    stack = dataclasses.replace(
        await create_stack(aws, timings=TIMINGS, task_visibility_seconds=60),
        poll_seconds=1.0, acks_idle_backoff=1.0, lease_duration=10.0)  # the workers' defaults
    service = FirmwareService(aws, stack.service_settings())
    image = Path(tempfile.mkdtemp()) / "fw.bin"
    image.write_bytes(b"firmware" * 1000)
    await service.upload("2.0.0", image)
    fleet = Fleet(aws, stack, devices=devices, tenants=10,
                  faults=UpdateFaults(install_seconds=1.0))
    started = time.monotonic()
    await fleet.seed()
    console.print(f"seeded {devices} devices in {time.monotonic() - started:.1f} s")
    reports = Path(tempfile.mkdtemp())
    workers = {name: _spawn(name, stack, endpoint, reports / f"{name}.json")
               for name in ("tasks", "acks")}
    try:
        async with anyio.create_task_group() as tg, runtime(aws, stack, "map-runs"):
            await tg.start(fleet.play)
            spec = RolloutSpec(version="2.0.0", zone="eu", canary=CANARY, growth=GROWTH,
                               success_threshold=95.0, abort_threshold=10.0,
                               min_executed=50, device_timeout=120.0, batch_size=1000,
                               max_concurrency=10)
            began = time.monotonic()
            rollout_id, _ = await service.start(spec)
            waves = await _follow(service, rollout_id)
            wall = time.monotonic() - began
            tg.cancel_scope.cancel()
    finally:
        for process in workers.values():
            process.send_signal(signal.SIGTERM)
        for process in workers.values():
            process.wait(30)
    # The floor: the same two workers, idle on the same stack for as long (startup, polls,
    # lease renewals). What the rollout cost them is the difference.
    idle_reports = Path(tempfile.mkdtemp())
    idle = {name: _spawn(name, stack, endpoint, idle_reports / f"{name}.json")
            for name in ("tasks", "acks")}
    await anyio.sleep(wall)
    for process in idle.values():
        process.send_signal(signal.SIGTERM)
    for process in idle.values():
        process.wait(30)
    floor = sum(json.loads((idle_reports / f"{n}.json").read_text())["cpu_seconds"]
                for n in idle)
    status = await service.status(rollout_id)
    record = await service.store.rollout(_uow(aws), rollout_id)
    assert record.execution_arn is not None
    transitions = await state_transitions(aws, record.execution_arn)
    batches = sum(math.ceil(w["size"] / 1000) for w in status["waves"])
    used = {name: json.loads((reports / f"{name}.json").read_text()) for name in workers}
    cpu = sum(u["cpu_seconds"] for u in used.values())
    requests = {name: sum(u["requests"].values()) for name, u in used.items()}
    return {"devices": devices, "state": status["state"], "counts": status["counts"],
            "waves": waves, "wall_seconds": wall, "transitions": transitions,
            "batches": batches, "worker_cpu_seconds": cpu, "idle_cpu_seconds": floor,
            "cpu_us_per_device": 1e6 * (cpu - floor) / devices,
            "cpu_us_per_device_with_idle": 1e6 * cpu / devices,
            "requests": requests,
            "requests_per_device": sum(requests.values()) / devices,
            "request_mix": {name: u["requests"] for name, u in used.items()}}


def _uow(aws: AwsClients) -> Any:
    from shared.outbox import UnitOfWork

    return UnitOfWork(aws)


def _spawn(name: str, stack: FirmwareStack, endpoint: str, report: Path) -> Any:
    env = {**os.environ, STACK_ENV: stack.to_json(), "AWS_ENDPOINT_URL": endpoint,
           REPORT_ENV: str(report)}
    command = [sys.executable, "-m", "services.firmware.harness", name]
    if os.environ.get("FIRMWARE_BENCH_CPROFILE"):  # a cProfile of each worker, beside its report
        command[1:1] = ["-m", "cProfile", "-o", str(report.with_suffix(".prof"))]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    profile = os.environ.get("FIRMWARE_BENCH_PYSPY")  # a py-spy binary: profile the workers
    if profile:  # it stops when the worker does
        subprocess.Popen([profile, "record", "--pid", str(process.pid), "-r", "200", "-f",
                          "raw", "-o", str(report.with_suffix(".txt"))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process


async def _follow(service: FirmwareService, rollout_id: str) -> list[dict[str, Any]]:
    """Each wave's wall time, from the moment it starts running to its completion."""
    began: dict[int, float] = {}
    ended: dict[int, float] = {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = await service.status(rollout_id)
        now = time.monotonic()
        for wave in status["waves"]:
            if wave["state"] != "planned":
                began.setdefault(wave["wave"], now)
            if wave["state"] == "completed":
                ended.setdefault(wave["wave"], now)
        if status["state"] not in ("RUNNING", "WAITING_APPROVAL", "PAUSED"):
            break
        await anyio.sleep(0.5)
    else:
        raise RuntimeError(f"rollout {rollout_id} did not end in 900 s")
    return [{"wave": w["wave"], "size": w["size"],
             "seconds": round(ended.get(w["wave"], now) - began.get(w["wave"], now), 1)}
            for w in status["waves"]]


# --------------------------------------------------------------------------- the reference


def reference_definition(queue_url: str) -> dict[str, Any]:
    """The seed's design: a Distributed Map over the devices, one child and one callback
    token per device."""
    return {
        "StartAt": "Devices",
        "States": {"Devices": {
            "Type": "Map",
            "ItemReader": {"Resource": "arn:aws:states:::s3:getObject",
                           "ReaderConfig": {"InputType": "JSON"},
                           "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"}},
            "MaxConcurrency": 40,
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": "SendCommand",
                "States": {
                    "SendCommand": {"Type": "Pass", "Comment": "the per-device Lambda",
                                    "Next": "WaitForVersion"},
                    "WaitForVersion": {
                        "Type": "Task",
                        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                        "Parameters": {"QueueUrl": queue_url, "MessageBody": {
                            "device.$": "$.device_id", "task_token.$": "$$.Task.Token"}},
                        "Next": "Updated"},
                    "Updated": {"Type": "Succeed"},
                }},
            "End": True,
        }},
    }


async def reference_design(aws: AwsClients, devices: int) -> dict[str, Any]:
    from shared.local import (
        MapRunnerSettings,
        StackFacts,
        apply_api_gaps,
        map_runs_queue,
        plan_gaps,
        serve_map_runs,
    )

    sqs, s3, sfn = (await aws.client("sqs"), await aws.client("s3"),
                    await aws.client("stepfunctions"))
    name = f"ref{int(time.time())}"
    queue = (await sqs.create_queue(QueueName=f"{name}-tokens"))["QueueUrl"]
    await s3.create_bucket(Bucket=name)
    items = [{"device_id": f"dev-{i:06d}"} for i in range(devices)]
    await s3.put_object(Bucket=name, Key="devices.json", Body=json.dumps(items).encode())
    template = {"Resources": {"Machine": {"Type": "AWS::StepFunctions::StateMachine",
                                          "Properties": {
                                              "StateMachineName": name,
                                              "RoleArn": "arn:aws:iam::123456789012:role/r",
                                              "Definition": reference_definition(queue)}}}}
    plan = plan_gaps(template, StackFacts(stack_name=name, region=aws.region,
                                          account="123456789012"))
    await apply_api_gaps(aws, plan)
    runs = (await sqs.get_queue_url(QueueName=map_runs_queue(name)))["QueueUrl"]
    stop = anyio.Event()
    answered = 0

    async def answer_tokens() -> None:
        nonlocal answered
        while True:
            got = await sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=1)
            for message in got.get("Messages", []):
                body = json.loads(message["Body"])
                await sfn.send_task_success(taskToken=body["task_token"], output="{}")
                await sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                answered += 1

    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve_map_runs(
            aws, runs, stop, settings=MapRunnerSettings(max_concurrency=40, poll_interval=0.1),
            task_status=task_status))
        for _ in range(4):
            tg.start_soon(answer_tokens)
        arn = (await sfn.start_execution(
            stateMachineArn=f"arn:aws:states:{aws.region}:123456789012:stateMachine:{name}",
            name="ref", input=json.dumps({"bucket": name, "key": "devices.json"})))[
            "executionArn"]
        for _ in range(3600):  # polls the execution: the emulator pushes nothing
            if (await sfn.describe_execution(executionArn=arn))["status"] != "RUNNING":
                break
            await anyio.sleep(1.0)
        wall = time.monotonic() - began
        stop.set()
        tg.cancel_scope.cancel()
    transitions = await state_transitions(aws, arn)
    return {"devices": devices, "transitions": transitions, "answered": answered,
            "wall_seconds": wall}


# --------------------------------------------------------------------------- planning


async def synthetic_pages(devices: int, page: int = 1000) -> AsyncIterator[Sequence[TargetDevice]]:
    """A read model of `devices` devices, a page at a time (what a Scan returns)."""
    versions = ("1.0.0", "1.1.0", "1.2.0")
    for start in range(0, devices, page):
        yield [TargetDevice(device_id=f"dev-{i:07d}", tenant=f"t-{i % 100:03d}", zone="eu",
                            firmware=versions[i % 3])
               for i in range(start, min(devices, start + page))]
        await anyio.lowlevel.checkpoint()


async def plan_only(devices: int) -> dict[str, Any]:
    """Plan `devices` devices into manifests in S3 (in this process; its peak RSS)."""
    async with AwsClients() as aws:
        s3 = await aws.client("s3")
        bucket = f"plan{int(time.time())}"
        await s3.create_bucket(Bucket=bucket)
        spec = RolloutSpec(version="2.0.0", zone="eu", canary=CANARY, growth=GROWTH)
        writers: list[ManifestWriter] = []

        def writer(n: int) -> ManifestWriter:
            writers.append(ManifestWriter(aws, bucket, "r-plan", n))
            return writers[-1]

        began = time.monotonic()
        waves = await plan_rollout(spec, "r-plan", lambda: synthetic_pages(devices), writer)
        seconds = time.monotonic() - began
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"devices": devices, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
            "waves": [w.size for w in waves], "s3_requests": writers[0].requests}


# --------------------------------------------------------------------------- report


def projected_transitions(run: dict[str, Any], devices: int) -> int:
    """Our design's transitions for `devices`: what the run spent outside its batch children
    per wave, plus one child's share per batch of 1,000 (fitted from the run)."""
    spec = RolloutSpec(version="2.0.0", zone="eu", canary=CANARY, growth=GROWTH)
    run_waves = len(run["waves"])
    per_batch = 1  # a child enters one state (UpdateBatch); retries would add
    fixed = run["transitions"] - per_batch * run["batches"]
    per_wave = fixed / max(1, run_waves)
    sizes = list(wave_sizes(spec, devices))
    batches = sum(math.ceil(s / 1000) for s in sizes)
    return math.ceil(per_wave * len(sizes) + per_batch * batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--reference", type=int, default=1_000)
    parser.add_argument("--plan", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plan-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_only:
        print(json.dumps(anyio.run(plan_only, args.plan_only)))
        return
    configure_logging(service="firmware-bench", level="WARNING", stream=sys.stderr)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with Emulator() as emulator:
        os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint_url

        async def run() -> tuple[dict[str, Any], dict[str, Any]]:
            async with AwsClients() as aws:
                console.print(f"our design over {args.devices} devices ...")
                ours = await our_design(aws, emulator.endpoint_url, args.devices)
                console.print(f"reference design over {args.reference} devices ...")
                ref = await reference_design(aws, args.reference)
                return ours, ref

        ours, ref = anyio.run(run)
        console.print(f"planning {args.plan} devices ...")
        planned = json.loads(subprocess.run(
            [sys.executable, __file__, "--plan-only", str(args.plan)], cwd=ROOT,
            env=os.environ, capture_output=True, text=True, check=True).stdout)
    million = 1_000_000
    our_million = projected_transitions(ours, million)
    ref_per_device = ref["transitions"] / ref["devices"]
    ref_million = math.ceil(ref_per_device * million)
    price = PRICES["stepfunctions_transition"]
    result = {"ours": ours, "reference": ref, "planning": planned,
              "projected_1m": {"ours_transitions": our_million,
                               "ours_usd": our_million * price,
                               "reference_transitions": ref_million,
                               "reference_usd": ref_million * price}}
    table = Table(title=f"firmware rollout: {ours['devices']} devices end to end; "
                        f"{ref['devices']} in the reference design")
    table.add_column("figure")
    table.add_column("ours", justify="right")
    table.add_column("reference (token per device)", justify="right")
    table.add_column("goal")
    table.add_row("state", ours["state"], f"{ref['answered']} answered")
    table.add_row("state transitions (run)", str(ours["transitions"]), str(ref["transitions"]))
    table.add_row("transitions per device", f"{ours['transitions'] / ours['devices']:.4f}",
                  f"{ref_per_device:.2f}")
    table.add_row("transitions, 1M devices", f"{our_million:,}", f"{ref_million:,}", "<= 5,000")
    table.add_row("Step Functions $, 1M devices", f"${our_million * price:.3f}",
                  f"${ref_million * price:,.2f}", "~$0.13")
    table.add_row("worker CPU per device (above idle)", f"{ours['cpu_us_per_device']:.0f} us",
                  "-", "<= 100 us")
    table.add_row("  with the idle floor", f"{ours['cpu_us_per_device_with_idle']:.0f} us "
                  f"({ours['worker_cpu_seconds']:.1f} s, idle {ours['idle_cpu_seconds']:.1f} s)",
                  "-")
    table.add_row("AWS requests per device (workers)", f"{ours['requests_per_device']:.3f}",
                  "-")
    table.add_row("wall time, whole rollout", f"{ours['wall_seconds']:.0f} s",
                  f"{ref['wall_seconds']:.0f} s")
    for wave in ours["waves"]:
        table.add_row(f"  wave {wave['wave']} ({wave['size']} devices)", f"{wave['seconds']} s",
                      "")
    table.add_row(f"planning {planned['devices']:,} devices", f"{planned['seconds']:.1f} s",
                  "", "< 60 s")
    table.add_row("planning peak RSS", f"{planned['peak_rss_mb']:.0f} MB", "", "< 300 MB")
    Console().print(table)
    Console().print(f"requests by worker: {json.dumps(ours['request_mix'])}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
