"""The firmware ECS services (`python -m shared.hosts.worker services.firmware.worker:X`):

- `tasks`: the rollout workflow's callback tasks (FirmwareTasksQueue). Batch holders run for
  up to a device timeout each and a wave runs `max_concurrency` of them at once, so the
  worker takes up to FLEETLINE_FIRMWARE_TASKS_IN_FLIGHT (default 64) messages at a time;
- `acks`: the devices' answers (FirmwareAcksStream, leased shards), counted once each.

Environment (from the task definition): FLEETLINE_FIRMWARE_TABLE, FLEETLINE_FIRMWARE_BUCKET,
FLEETLINE_DEVICE_READ_MODEL_TABLE, FLEETLINE_FIRMWARE_TASKS_QUEUE,
FLEETLINE_FIRMWARE_ACKS_STREAM, FLEETLINE_ACCOUNT_ID, FLEETLINE_IOT_JOBS_PRESIGN_ROLE
(optional: the role IoT Jobs assumes to sign download URLs).
"""

from __future__ import annotations

import os

from services.firmware.acks import AckApplier
from services.firmware.tasks import FirmwareTasks, TaskSettings
from shared.aws import AwsClients
from shared.config import Resources
from shared.consumers import BatchHandler, SqsSettings
from shared.hosts import KinesisStream, SqsQueue, Worker

__all__ = ["acks", "task_settings", "tasks"]


def task_settings(aws: AwsClients, resources: Resources) -> TaskSettings:
    return TaskSettings(
        table=resources.get("FirmwareTable"),
        bucket=resources.get("FirmwareBucket"),
        read_model_table=resources.get("DeviceReadModelTable"),
        account_id=os.environ.get("FLEETLINE_ACCOUNT_ID", "123456789012"),
        region=aws.region,
        presign_role_arn=os.environ.get("FLEETLINE_IOT_JOBS_PRESIGN_ROLE") or None,
        poll_seconds=float(os.environ.get("FLEETLINE_FIRMWARE_POLL_SECONDS", "1.0")),
    )


def _tasks_handler(aws: AwsClients, resources: Resources) -> BatchHandler:
    return FirmwareTasks(aws, task_settings(aws, resources)).batch_handler()


def _acks_handler(aws: AwsClients, resources: Resources) -> BatchHandler:
    return AckApplier(aws, resources.get("FirmwareTable"))


def tasks() -> Worker:
    in_flight = int(os.environ.get("FLEETLINE_FIRMWARE_TASKS_IN_FLIGHT", "64"))
    wait = int(os.environ.get("FLEETLINE_WAIT_TIME_SECONDS", "20"))
    return Worker(
        name="firmware-tasks",
        source=SqsQueue("FirmwareTasksQueue",
                        SqsSettings(max_in_flight=in_flight, wait_time_seconds=wait)),
        handler=_tasks_handler,
    )


def acks() -> Worker:
    return Worker(
        name="firmware-acks",
        source=KinesisStream("FirmwareAcksStream", application="firmware-acks",
                             failure_queue="FirmwareAcksFailureQueue"),
        handler=_acks_handler,
    )
