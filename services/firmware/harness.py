"""The firmware context in one process, on any endpoint: for integration tests and the
benchmark (`fleetline up` runs the same handlers from the template instead).

`create_stack` makes the resources through the API as the template declares them (the
firmware table with its index and stream, the bucket, the tasks queue with its DLQ, the acks
stream, the lease table, a devices read model), and the rollout state machine from
`workflow.build_definition` with the given timings, deployed the way `fleetline up` deploys
the template's (`shared.local.plan_gaps` + `apply_api_gaps`: its Distributed Map states run
by the local map-runs process).

`FirmwareRuntime` runs the processes as tasks: the tasks worker, the acks worker, the
map-runs process; each can be killed (cancelled: no drain, heartbeats stop) and started
again. `python -m services.firmware.harness tasks` runs the tasks worker alone from
`$FLEETLINE_FIRMWARE_STACK`, so a test can SIGKILL it for real.

`Fleet` plays the devices without the devices context: it seeds the read model, reads the IoT
jobs as the simulator does (services.devices.firmware_agent) and writes each answer straight
onto the acks stream as the devices bus's rule would (an EventBridge event whose detail is a
FirmwareVersionReported / FirmwareUpdateFailed envelope): the firmware context's contract.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import anyio.abc

from services.devices.firmware_agent import DeviceAnswer, UpdateFaults, UpdatePlan, watch_jobs
from services.firmware.acks import AckApplier
from services.firmware.service import FirmwareService, ServiceSettings
from services.firmware.tasks import FirmwareTasks, TaskSettings
from services.firmware.workflow import WorkflowTimings, build_definition
from shared.aws import AwsClients, aws_errors
from shared.consumers import SqsConsumer, SqsSettings, create_lease_table
from shared.consumers.kinesis import KinesisConsumer
from shared.consumers.streams import StreamConsumerConfig
from shared.dynamodb import to_item
from shared.testing import KillableTasks, create_queue_with_dlq

__all__ = [
    "REPORT_ENV", "STACK_ENV", "TEST_TIMINGS", "FirmwareRuntime", "FirmwareStack", "Fleet",
    "create_stack", "runtime",
]

STACK_ENV = "FLEETLINE_FIRMWARE_STACK"
ACCOUNT = "123456789012"
# A killed batch holder is noticed within 4 s (its heartbeats stop), a retry comes 1 s later.
TEST_TIMINGS = WorkflowTimings(beat_seconds=1, heartbeat_seconds=4, plan_heartbeat_seconds=10,
                               retry_interval_seconds=1, retry_max_attempts=6,
                               retry_backoff_rate=1.2)


@dataclass(frozen=True, kw_only=True)
class FirmwareStack:
    name: str
    table: str
    bucket: str
    read_model_table: str
    lease_table: str
    tasks_queue: str
    acks_stream: str
    state_machine_arn: str
    map_runs_queue: str
    zone: str = "eu"
    # How often a batch holder looks at its counters, how soon an idle acks shard is read
    # again, how long a lease lives: short for tests; the benchmark sets the workers'
    # production defaults (1 s, 1 s, 10 s).
    poll_seconds: float = 0.2
    acks_idle_backoff: float = 0.1
    lease_duration: float = 3.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FirmwareStack:
        return cls(**json.loads(text))

    def service_settings(self) -> ServiceSettings:
        return ServiceSettings(table=self.table, bucket=self.bucket,
                               state_machine_arn=self.state_machine_arn, zone=self.zone)

    def task_settings(self, region: str) -> TaskSettings:
        return TaskSettings(table=self.table, bucket=self.bucket,
                            read_model_table=self.read_model_table, account_id=ACCOUNT,
                            region=region, poll_seconds=self.poll_seconds)


async def create_stack(aws: AwsClients, *, prefix: str | None = None,
                       timings: WorkflowTimings = TEST_TIMINGS, zone: str = "eu",
                       task_visibility_seconds: int = 10) -> FirmwareStack:
    """Every firmware resource through the API (names start with `prefix`)."""
    from shared.local import StackFacts, apply_api_gaps, map_runs_queue, plan_gaps

    p = prefix or f"fw{uuid.uuid4().hex[:6]}"
    ddb, sqs, s3 = (await aws.client("dynamodb"), await aws.client("sqs"),
                    await aws.client("s3"))
    kinesis = await aws.client("kinesis")
    with aws_errors():
        await ddb.create_table(
            TableName=f"{p}-firmware", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                                  for n in ("pk", "sk", "gsi1pk", "gsi1sk")],
            GlobalSecondaryIndexes=[{
                "IndexName": "ByCreated", "Projection": {"ProjectionType": "ALL"},
                "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"},
                              {"AttributeName": "gsi1sk", "KeyType": "RANGE"}]}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
        await ddb.create_table(
            TableName=f"{p}-device-read-model", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "tenant_id", "KeyType": "HASH"},
                       {"AttributeName": "device_id", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                                  for n in ("tenant_id", "device_id")])
        await s3.create_bucket(Bucket=f"{p}-firmware")
        await kinesis.create_stream(StreamName=f"{p}-firmware-acks", ShardCount=1)
    tasks = (await create_queue_with_dlq(aws, f"{p}-firmware-tasks", max_receive_count=10,
                                         visibility_timeout=task_visibility_seconds)).url
    await create_lease_table(aws, f"{p}-leases")
    definition = json.loads(json.dumps(build_definition(timings)).replace(
        "${FirmwareTasksQueueUrl}", tasks))
    name = f"{p}-firmware-rollout"
    template = {"Resources": {"FirmwareRolloutStateMachine": {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {"StateMachineName": name, "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/r",
                       "Definition": definition}}}}
    plan = plan_gaps(template, StackFacts(stack_name=p, region=aws.region, account=ACCOUNT))
    if plan.problems:
        raise RuntimeError(f"the rollout workflow cannot run locally: {plan.problems}")
    _, refused = await apply_api_gaps(aws, plan)
    if refused:
        raise RuntimeError(f"creating the rollout workflow failed: {refused}")
    with aws_errors():
        runs = (await sqs.get_queue_url(QueueName=map_runs_queue(p)))["QueueUrl"]
        for _ in range(200):  # moto makes a stream ACTIVE at once; AWS takes seconds
            summary = await kinesis.describe_stream_summary(StreamName=f"{p}-firmware-acks")
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            await anyio.sleep(0.05)
    return FirmwareStack(
        name=p, table=f"{p}-firmware", bucket=f"{p}-firmware",
        read_model_table=f"{p}-device-read-model", lease_table=f"{p}-leases",
        tasks_queue=tasks, acks_stream=f"{p}-firmware-acks",
        state_machine_arn=f"arn:aws:states:{aws.region}:{ACCOUNT}:stateMachine:{name}",
        map_runs_queue=runs, zone=zone)


class FirmwareRuntime:
    """The firmware processes as tasks of `task_group` (see the module docstring)."""

    PROCESSES = ("tasks", "acks", "map-runs")

    def __init__(self, aws: AwsClients, stack: FirmwareStack,
                 task_group: anyio.abc.TaskGroup) -> None:
        self.aws = aws
        self.stack = stack
        self._processes = KillableTasks(task_group, self._run)
        self.acks: AckApplier | None = None
        self.tasks: FirmwareTasks | None = None

    async def _run(self, name: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        from shared.local import MapRunnerSettings, serve_map_runs

        s = self.stack
        if name == "tasks":
            self.tasks = FirmwareTasks(self.aws, s.task_settings(self.aws.region))
            consumer = SqsConsumer(self.aws, s.tasks_queue, self.tasks.batch_handler(),
                                   settings=SqsSettings(wait_time_seconds=1,
                                                        max_in_flight=64,
                                                        drain_seconds=0.5))
            await consumer.run(task_status=task_status)
        elif name == "acks":
            self.acks = AckApplier(self.aws, s.table)
            kinesis = KinesisConsumer(
                self.aws, self.acks, stream=s.acks_stream,
                config=StreamConsumerConfig(
                    lease_table=s.lease_table, application="firmware-acks",
                    lease_duration=s.lease_duration, idle_backoff=s.acks_idle_backoff,
                    shard_sync_interval=2.0, shutdown_grace=0.5))
            await kinesis.run(task_status=task_status)
        else:
            stop = anyio.Event()
            settings = MapRunnerSettings(poll_interval=0.05, parent_check_interval=0.5)
            await serve_map_runs(self.aws, s.map_runs_queue, stop, settings=settings,
                                 task_status=task_status)

    async def start(self, *names: str) -> None:
        """Start the named processes (all when none are named).

        Raises RuntimeError when one of them is running already."""
        await self._processes.start(*(names or self.PROCESSES))

    async def kill(self, name: str) -> None:
        """Cancel a process at once, like SIGKILL."""
        await self._processes.kill(name)

    async def stop(self) -> None:
        for name in self._processes.running:
            await self._processes.kill(name)


@contextlib.asynccontextmanager
async def runtime(aws: AwsClients, stack: FirmwareStack, *names: str
                  ) -> AsyncIterator[FirmwareRuntime]:
    """A runtime with the named processes (all by default), stopped at the end."""
    async with anyio.create_task_group() as tg:
        running = FirmwareRuntime(aws, stack, tg)
        await running.start(*names)
        try:
            yield running
        finally:
            await running.stop()
            tg.cancel_scope.cancel()


@dataclass
class Fleet:
    """Devices `dev-0001`... of tenants `t-1`... in the read model, answering IoT jobs with
    the faults given, their answers straight onto the acks stream."""

    aws: AwsClients
    stack: FirmwareStack
    devices: int = 100
    tenants: int = 2
    firmware: str = "1.0.0"
    faults: UpdateFaults = field(default_factory=UpdateFaults)
    zones: dict[str, str] = field(default_factory=dict)  # device -> zone (default: the stack's)
    duplicate_answers: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    answers: list[DeviceAnswer] = field(default_factory=list)
    commanded: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.ids = [f"dev-{i + 1:04d}" for i in range(self.devices)]
        self.tenant_of = {d: f"t-{i % self.tenants + 1}" for i, d in enumerate(self.ids)}
        self.versions = dict.fromkeys(self.ids, self.firmware)
        self.plan = UpdatePlan(self.faults, seed=7)

    async def seed(self) -> None:
        """The devices into the read model (as the projection would have them)."""
        ddb = await self.aws.client("dynamodb")
        for start in range(0, len(self.ids), 25):
            requests = [{"PutRequest": {"Item": to_item({
                "tenant_id": self.tenant_of[d], "device_id": d,
                "zone": self.zones.get(d, self.stack.zone), "status": "online",
                "firmware": self.versions[d]})}} for d in self.ids[start:start + 25]]
            with aws_errors():
                await ddb.batch_write_item(RequestItems={self.stack.read_model_table: requests})

    async def play(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                   ) -> None:
        """Watch the jobs and answer until cancelled."""
        index = {d: i for i, d in enumerate(self.ids)}
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_jobs, self.aws, self.plan, index)
            task_status.started()
            kinesis = await self.aws.client("kinesis")
            while True:
                due = self.plan.due(time.time())
                if due:
                    await self._answer(kinesis, due)
                await anyio.sleep(0.05)

    async def _answer(self, kinesis: Any, due: Sequence[DeviceAnswer]) -> None:
        records: list[dict[str, Any]] = []
        for answer in due:
            device = self.ids[answer.device]
            self.answers.append(answer)
            previous = self.versions[device]
            if not answer.failed:
                self.versions[device] = answer.version
            record = _answer_event(device, self.tenant_of[device], answer, previous)
            copies = 2 if self.duplicate_answers else 1
            records.extend({"Data": record, "PartitionKey": device} for _ in range(copies))
        for start in range(0, len(records), 500):
            with aws_errors():
                await kinesis.put_records(StreamName=self.stack.acks_stream,
                                          Records=records[start:start + 500])


def _answer_event(device: str, tenant: str, answer: DeviceAnswer, previous: str) -> bytes:
    kind = "FirmwareUpdateFailed" if answer.failed else "FirmwareVersionReported"
    data: dict[str, Any] = {"device": {"device_id": device, "tenant_id": tenant},
                            "version": answer.version}
    if answer.failed:
        data.update(reason=answer.reason or "failed", job=answer.job)
    else:
        data["previous"] = previous
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    envelope = {"id": str(uuid.uuid4()), "type": kind, "source": "fleetline.devices",
                "version": 1, "time": now, "aggregate_id": device, "sequence": 1,
                "tenant_id": tenant, "data": data}
    return json.dumps({"version": "0", "id": str(uuid.uuid4()), "detail-type": kind,
                       "source": "fleetline.devices", "time": now, "resources": [],
                       "detail": envelope}).encode()


async def service(aws: AwsClients, stack: FirmwareStack) -> FirmwareService:
    return FirmwareService(aws, stack.service_settings())


REPORT_ENV = "FLEETLINE_HARNESS_REPORT"


def main(argv: list[str]) -> None:
    """`python -m services.firmware.harness tasks|acks|map-runs`: one process of the stack
    in `$FLEETLINE_FIRMWARE_STACK` until SIGTERM / SIGINT. With `$FLEETLINE_HARNESS_REPORT`
    (a path), it writes there, on its way out, the CPU seconds it used and the AWS requests
    it sent (the benchmark's figures)."""
    if len(argv) != 2 or argv[1] not in FirmwareRuntime.PROCESSES:
        sys.exit(f"usage: python -m services.firmware.harness "
                 f"{{{'|'.join(FirmwareRuntime.PROCESSES)}}}")
    stack = FirmwareStack.from_json(os.environ[STACK_ENV])

    async def run() -> None:
        async with AwsClients() as aws:
            async with runtime(aws, stack, argv[1]):
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
            report = os.environ.get(REPORT_ENV)
            if report:
                import resource

                usage = resource.getrusage(resource.RUSAGE_SELF)
                await anyio.Path(report).write_text(json.dumps({
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "max_rss_kb": usage.ru_maxrss,
                    "requests": aws.counter.snapshot()}))

    anyio.run(run)


if __name__ == "__main__":
    main(sys.argv)
