"""Distributed Map states on the emulator, as `fleetline up` runs them: the definition planned
from a template and created by the local runner (`plan_gaps` + `apply_api_gaps`, the Map
state rewritten, its item processor a machine of its own), the map-runs process consuming
the local queue (in this process, or as `python -m shared.local._hosts` where it is killed),
everything over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from shared.aws import AwsClients
from shared.emulator import Emulator
from shared.local import StackFacts, plan_gaps
from shared.local._distributed_map import (
    MapRunnerSettings,
    map_runs_queue,
    serve_map_runs,
    state_transitions,
)
from shared.local._supply import SPEC_ENV, apply_api_gaps

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/rollout"
STACK = "dm"
FAST = MapRunnerSettings(poll_interval=0.05, parent_check_interval=0.5, receive_wait_seconds=1)
WITHIN_S = 30.0


async def deploy(aws: AwsClients, name: str, definition: dict[str, Any]) -> str:
    """Create the state machine `name` from a one-resource template, as `up` does; its ARN."""
    template = {"Resources": {"Machine": {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {"StateMachineName": name, "RoleArn": ROLE, "Definition": definition},
    }}}
    facts = StackFacts(stack_name=STACK, region="us-east-1", account=ACCOUNT)
    plan = plan_gaps(template, facts)
    assert plan.problems == {}
    assert plan.map_runs_queue == map_runs_queue(STACK)
    done, refused = await apply_api_gaps(aws, plan)
    assert refused == {}
    assert sorted(done) == sorted(["Machine", map_runs_queue(STACK)])
    return f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:{name}"


async def queue_url(aws: AwsClients, name: str) -> str:
    sqs = await aws.client("sqs")
    return str((await sqs.get_queue_url(QueueName=name))["QueueUrl"])


@asynccontextmanager
async def map_runs(aws: AwsClients, settings: MapRunnerSettings = FAST) -> AsyncIterator[None]:
    """The map-runs process's loop, in this process, for the length of the block."""
    url = await queue_url(aws, map_runs_queue(STACK))
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve_map_runs(
            aws, url, stop, settings=settings, task_status=task_status))
        try:
            yield
        finally:
            stop.set()


async def finished(aws: AwsClients, execution_arn: str, within: float = WITHIN_S) -> Any:
    sfn = await aws.client("stepfunctions")
    with anyio.fail_after(within):
        while True:
            described = await sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            await anyio.sleep(0.05)


async def start(aws: AwsClients, machine: str, name: str, payload: Any) -> str:
    sfn = await aws.client("stepfunctions")
    started = await sfn.start_execution(stateMachineArn=machine, name=name,
                                        input=json.dumps(payload))
    return str(started["executionArn"])


async def children(aws: AwsClients, processor: str, status: str | None = None) -> list[Any]:
    sfn = await aws.client("stepfunctions")
    listed = await sfn.list_executions(
        stateMachineArn=f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:{processor}",
        maxResults=1000, **({"statusFilter": status} if status else {}))
    return list(listed["executions"])


def processor(states: dict[str, Any], start_at: str, *, execution_type: str = "STANDARD",
              ) -> dict[str, Any]:
    return {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": execution_type},
            "StartAt": start_at, "States": states}


def asking(queue: str) -> dict[str, Any]:
    """An item processor whose one task waits until the test answers it."""
    return processor({"Ask": {
        "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": queue,
                       "MessageBody": {"token.$": "$$.Task.Token", "item.$": "$"}},
        "End": True}}, "Ask")


async def tasks(aws: AwsClients, url: str, wait: int = 1) -> list[dict[str, Any]]:
    """Task messages from children, deleted as received."""
    sqs = await aws.client("sqs")
    got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
    out = []
    for message in got.get("Messages", []):
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        out.append(json.loads(message["Body"]))
    return out


async def answer(aws: AwsClients, task: dict[str, Any]) -> None:
    sfn = await aws.client("stepfunctions")
    await sfn.send_task_success(taskToken=task["token"], output=json.dumps({"done": task["item"]}))


async def test_a_wave_of_2500_items_from_s3_in_batches_of_1000_with_results_in_s3(
    aws: AwsClients,
) -> None:
    s3 = await aws.client("s3")
    await s3.create_bucket(Bucket="manifests")
    await s3.create_bucket(Bucket="results")
    devices = [{"id": f"d-{n:04d}", "zone": "eu" if n % 2 else "us"} for n in range(2500)]
    await s3.put_object(Bucket="manifests", Key="wave-1.json", Body=json.dumps(devices).encode())
    definition = {"StartAt": "Wave", "States": {
        "Wave": {
            "Type": "Map",
            "ItemReader": {"Resource": "arn:aws:states:::s3:getObject",
                           "ReaderConfig": {"InputType": "JSON"},
                           "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"}},
            "ItemSelector": {"device.$": "$$.Map.Item.Value.id", "index.$": "$$.Map.Item.Index"},
            "ItemBatcher": {"MaxItemsPerBatch": 1000,
                            "BatchInput": {"wave.$": "$.wave", "execution.$": "$$.Execution.Name"}},
            "ItemProcessor": processor({"Count": {
                "Type": "Pass",
                "Parameters": {"count.$": "States.ArrayLength($.Items)",
                               "first.$": "$.Items[0]", "batch.$": "$.BatchInput"},
                "End": True}}, "Count", execution_type="EXPRESS"),
            "ResultWriter": {"Resource": "arn:aws:states:::s3:putObject",
                             "Parameters": {"Bucket": "results", "Prefix.$": "$.wave"}},
            "ResultPath": "$.map",
            "Next": "Continue",
        },
        "Continue": {"Type": "Pass", "Parameters": {"manifest.$": "$.map.ResultWriterDetails.Key",
                                                    "wave.$": "$.wave"}, "End": True},
    }}
    machine = await deploy(aws, "rollout", definition)
    async with map_runs(aws):
        execution = await start(aws, machine, "wave-1",
                                {"bucket": "manifests", "key": "wave-1.json", "wave": "w1"})
        described = await finished(aws, execution)
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["wave"] == "w1"
    run_id = output["manifest"].split("/")[1]
    assert output["manifest"] == f"w1/{run_id}/manifest.json"
    manifest = json.loads(await (await s3.get_object(
        Bucket="results", Key=output["manifest"]))["Body"].read())
    assert manifest["DestinationBucket"] == "results"
    assert manifest["MapRunArn"] == (
        f"arn:aws:states:us-east-1:{ACCOUNT}:mapRun:rollout/Wave:{run_id}")
    assert (manifest["ResultFiles"]["FAILED"], manifest["ResultFiles"]["PENDING"]) == ([], [])
    (succeeded,) = manifest["ResultFiles"]["SUCCEEDED"]
    body = await (await s3.get_object(Bucket="results", Key=succeeded["Key"]))["Body"].read()
    assert succeeded == {"Key": f"w1/{run_id}/SUCCEEDED_0.json", "Size": len(body)}
    records = json.loads(body)
    assert [r["Status"] for r in records] == ["SUCCEEDED"] * 3
    assert [r["Name"] for r in records] == [f"{run_id}-{n}" for n in range(3)]
    outputs = [json.loads(r["Output"]) for r in records]
    assert outputs == [
        {"count": count, "first": {"device": f"d-{first:04d}", "index": first},
         "batch": {"wave": "w1", "execution": "wave-1"}}
        for count, first in ((1000, 0), (1000, 1000), (500, 2000))
    ]
    # The parent: its map state entered once, and every child's states.
    transitions = await state_transitions(aws, execution)
    assert transitions == 2 + 3 * 1


async def test_failures_under_the_threshold_succeed_and_over_it_reach_the_catch(
    aws: AwsClients,
) -> None:
    s3 = await aws.client("s3")
    await s3.create_bucket(Bucket="results")

    def definition(tolerance: dict[str, Any]) -> dict[str, Any]:
        return {"StartAt": "Wave", "States": {
            "Wave": {
                "Type": "Map", "ItemsPath": "$.devices", "MaxConcurrency": 1, **tolerance,
                "ItemProcessor": processor({
                    "Check": {"Type": "Choice", "Choices": [
                        {"Variable": "$.fail", "BooleanEquals": True, "Next": "Reject"}],
                        "Default": "Update"},
                    "Reject": {"Type": "Fail", "Error": "Firmware.Rejected", "Cause": "bad image"},
                    "Update": {"Type": "Pass", "Result": "updated", "End": True}}, "Check"),
                "ResultWriter": {"Resource": "arn:aws:states:::s3:putObject",
                                 "Parameters": {"Bucket": "results", "Prefix": "runs"}},
                "Catch": [{"ErrorEquals": ["States.ExceedToleratedFailureThreshold"],
                           "ResultPath": "$.halted", "Next": "Halted"}],
                "End": True},
            "Halted": {"Type": "Pass", "End": True}}}

    devices = [{"n": n, "fail": n in {0, 4}} for n in range(10)]
    tolerant = await deploy(aws, "tolerant", definition({"ToleratedFailurePercentage": 20}))
    strict = await deploy(aws, "strict", definition({"ToleratedFailureCount": 0}))
    async with map_runs(aws):
        ok = await finished(aws, await start(aws, tolerant, "w", {"devices": devices}))
        halted = await finished(aws, await start(aws, strict, "w", {"devices": devices}))

    assert ok["status"] == "SUCCEEDED", ok
    assert "halted" not in json.loads(ok["output"])  # 2 of 10 failed: 20 % is tolerated
    assert len(await children(aws, "tolerant-Wave")) == 10

    assert halted["status"] == "SUCCEEDED", halted  # the Catch took it
    caught = json.loads(halted["output"])["halted"]
    assert caught["Error"] == "States.ExceedToleratedFailureThreshold"
    assert "1 of 10 items failed" in caught["Cause"]
    # The first child failed; no further child started.
    (only,) = await children(aws, "strict-Wave")
    assert only["status"] == "FAILED"
    # The results were written all the same: the failed child, and nine never started.
    listed = await s3.list_objects_v2(Bucket="results", Prefix="runs/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    run_id = only["name"].rsplit("-", 1)[0]
    assert f"runs/{run_id}/PENDING_0.json" in keys
    pending = json.loads(await (await s3.get_object(
        Bucket="results", Key=f"runs/{run_id}/PENDING_0.json"))["Body"].read())
    assert [json.loads(p["Input"])["n"] for p in pending] == list(range(1, 10))
    failed = json.loads(await (await s3.get_object(
        Bucket="results", Key=f"runs/{run_id}/FAILED_0.json"))["Body"].read())
    assert [(f["Error"], f["Cause"]) for f in failed] == [("Firmware.Rejected", "bad image")]


async def test_past_the_threshold_the_running_children_are_stopped(aws: AwsClients) -> None:
    sqs, sfn = await aws.client("sqs"), await aws.client("stepfunctions")
    asks = (await sqs.create_queue(QueueName="asks"))["QueueUrl"]
    machine = await deploy(aws, "stopping", {"StartAt": "Wave", "States": {
        "Wave": {"Type": "Map", "ItemsPath": "$.devices", "MaxConcurrency": 3,
                 "ItemProcessor": asking(asks),
                 "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Halted"}], "End": True},
        "Halted": {"Type": "Pass", "End": True}}})
    devices = [f"d-{n}" for n in range(5)]
    async with map_runs(aws):
        execution = await start(aws, machine, "w", {"devices": devices})
        waiting: list[dict[str, Any]] = []
        with anyio.fail_after(WITHIN_S):
            while len(waiting) < 3:
                waiting.extend(await tasks(aws, asks))
        rejected = next(t for t in waiting if t["item"] == "d-1")
        await sfn.send_task_failure(taskToken=rejected["token"], error="Firmware.Rejected",
                                    cause="bad image")
        described = await finished(aws, execution)
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"])["Error"] == "States.ExceedToleratedFailureThreshold"
    statuses = {c["name"].rsplit("-", 1)[1]: c["status"]
                for c in await children(aws, "stopping-Wave")}
    assert statuses == {"0": "ABORTED", "1": "FAILED", "2": "ABORTED"}  # d-3, d-4 never ran
    assert await tasks(aws, asks, wait=0) == []


async def test_max_concurrency_bounds_the_running_children(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    asks = (await sqs.create_queue(QueueName="asks"))["QueueUrl"]
    machine = await deploy(aws, "bounded", {"StartAt": "Wave", "States": {"Wave": {
        "Type": "Map", "ItemsPath": "$.devices", "MaxConcurrency": 2,
        "ItemProcessor": asking(asks), "End": True}}})
    devices = [f"d-{n}" for n in range(6)]
    seen: list[str] = []
    most = 0
    async with map_runs(aws):
        execution = await start(aws, machine, "w", {"devices": devices})
        with anyio.fail_after(WITHIN_S):
            while len(seen) < len(devices):
                got = await tasks(aws, asks)
                running = len(await children(aws, "bounded-Wave", "RUNNING"))
                most = max(most, running)
                assert running <= 2
                for task in got:
                    seen.append(task["item"])
                    await answer(aws, task)
        described = await finished(aws, execution)
    assert most == 2  # the bound was reached, never passed
    assert sorted(seen) == devices
    assert json.loads(described["output"]) == [{"done": d} for d in devices]  # in item order


async def test_a_distributed_map_inside_an_item_processor_runs_too(aws: AwsClients) -> None:
    """The processor's own Distributed Map becomes a machine of its own, and its map runs
    are carried out while the outer run waits for them."""
    inner = {"Type": "Map", "ItemsPath": "$.devices",
             "ItemSelector": {"device.$": "$$.Map.Item.Value", "group.$": "$.name"},
             "ItemProcessor": processor({"Tag": {"Type": "Pass", "End": True}}, "Tag"),
             "End": True}
    machine = await deploy(aws, "nested", {"StartAt": "Groups", "States": {"Groups": {
        "Type": "Map", "ItemsPath": "$.groups",
        "ItemProcessor": processor({"Devices": inner}, "Devices"), "End": True}}})
    groups = [{"name": "g1", "devices": ["a", "b"]}, {"name": "g2", "devices": ["c"]}]
    async with map_runs(aws):
        execution = await start(aws, machine, "w", {"groups": groups})
        described = await finished(aws, execution)
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"]) == [
        [{"device": "a", "group": "g1"}, {"device": "b", "group": "g1"}],
        [{"device": "c", "group": "g2"}]]
    assert len(await children(aws, "nested-Groups")) == 2
    assert len(await children(aws, "nested-Groups-Devices")) == 3
    # 1 (Groups) + 2 outer children x 1 (Devices) + 3 inner children x 1 (Tag)
    assert await state_transitions(aws, execution) == 1 + 2 + 3


def start_runner(endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    """The map-runs process as `fleetline up` starts it."""
    spec = {"kind": "map-runs", "queue": map_runs_queue(STACK),
            "settings": {"poll_interval": 0.05, "parent_check_interval": 0.5,
                         "receive_wait_seconds": 1}}
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, SPEC_ENV: json.dumps(spec)}
    return subprocess.Popen(
        [sys.executable, "-m", "shared.local._hosts"], cwd=ROOT, env=env,
        stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def test_a_runner_killed_mid_run_resumes_it_without_starting_a_child_twice(
    aws: AwsClients, emulator: Emulator, tmp_path: Path,
) -> None:
    sqs = await aws.client("sqs")
    asks = (await sqs.create_queue(QueueName="asks"))["QueueUrl"]
    machine = await deploy(aws, "resumed", {"StartAt": "Wave", "States": {"Wave": {
        "Type": "Map", "ItemsPath": "$.devices", "MaxConcurrency": 3,
        "ItemProcessor": asking(asks), "End": True}}})
    # The request comes back 2 s after the process dies (up's queue keeps it 10 s).
    await sqs.set_queue_attributes(QueueUrl=await queue_url(aws, map_runs_queue(STACK)),
                                   Attributes={"VisibilityTimeout": "2"})
    devices = [f"d-{n}" for n in range(6)]
    log = tmp_path / "map-runs.log"
    runner = start_runner(emulator.endpoint_url, log)
    try:
        execution = await start(aws, machine, "w", {"devices": devices})
        waiting: list[dict[str, Any]] = []
        with anyio.fail_after(WITHIN_S):
            while len(waiting) < 3:
                waiting.extend(await tasks(aws, asks))
        runner.send_signal(signal.SIGKILL)  # mid-run: three children wait, three to start
        runner.wait(5)
        # The first three items ran first (in whichever order their tasks arrived).
        assert sorted(task["item"] for task in waiting) == devices[:3]
        waiting.sort(key=lambda task: task["item"])
        await answer(aws, waiting.pop(0))  # one ends while no runner runs; two still run
        runner = start_runner(emulator.endpoint_url, log)
        seen = devices[:3]  # a copy: the three asked for before the kill
        with anyio.fail_after(WITHIN_S):
            while len(seen) < len(devices):
                got = await tasks(aws, asks)
                running = len(await children(aws, "resumed-Wave", "RUNNING"))
                assert running <= 3  # the adopted ones count against MaxConcurrency
                seen.extend(task["item"] for task in got)
                waiting.extend(got)
                if waiting and not got:
                    await answer(aws, waiting.pop(0))
            for task in waiting:
                await answer(aws, task)
        described = await finished(aws, execution)
        assert await tasks(aws, asks, wait=0) == []  # no seventh task: nothing ran twice
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(10)
        except subprocess.TimeoutExpired:
            runner.kill()
    text = log.read_text()
    assert described["status"] == "SUCCEEDED", (described, text[-3000:])
    # Every item ran once. Children started together may put their tasks in any order, so the
    # order is not compared; that d-3.. waited for a free slot is the `running <= 3` above.
    assert sorted(seen) == devices, seen
    names = sorted(c["name"] for c in await children(aws, "resumed-Wave"))
    run_id = names[0].rsplit("-", 1)[0]
    assert names == [f"{run_id}-{n}" for n in range(6)]  # each started once
    assert json.loads(described["output"]) == [{"done": d} for d in devices]
    assert '"resumed": 3' in text  # the second process adopted the three children
    assert "map run interrupted" not in text  # killed, not failed
