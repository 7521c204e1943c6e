"""The simulated devices' firmware side: they take IoT Jobs commands and answer.

On AWS a device learns of a job over MQTT (`$aws/things/<id>/jobs/notify-next`), downloads
the image from the pre-signed URL, installs it and reports. The emulator has no MQTT broker
and does not serve the jobs data plane (../shared/notes/emulator.md), so the simulator, which
stands in for the fleet, reads the jobs from the control plane: `ListJobs` every second and,
for each new job, its document and targets (`GetJobDocument`, `ListJobExecutionsForJob`),
a handful of requests per batch of devices, not per device.

Each targeted device of this fleet then answers as a device would, on the device path: after
downloading (`size` at `bandwidth` bytes/s) and installing (`install_seconds`), it sends a
telemetry record right away with its `firmware` and the job's outcome,
`firmware_update: {"status": "succeeded" | "failed", "version", "job", "reason"}` (the
devices context emits FirmwareVersionReported or FirmwareUpdateFailed). Faults, decided per
device and version from the seed (the same fleet fails the same way however often a version
is rolled out):

    fail      the install fails (the device stays on its version)
    late      the device answers after `late_seconds` (past a short device timeout)
    silent    the device never answers
    bad       versions for which `bad_fail` of the devices fail (drives abort and rollback)

A rollback job (`operation: firmware-rollback`) always installs: the old image is known good.
`UpdatePlan` is pure: tests drive it without I/O.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import structlog

from shared.aws import AwsClients, aws_errors

__all__ = ["DeviceAnswer", "UpdateFaults", "UpdatePlan", "watch_jobs"]

log = structlog.get_logger("services.devices.firmware_agent")
JOB_POLL_SECONDS: Final = 1.0


@dataclass(frozen=True, kw_only=True)
class UpdateFaults:
    fail: float = 0.0
    late: float = 0.0
    silent: float = 0.0
    bad_versions: frozenset[str] = frozenset()
    bad_fail: float = 0.9
    late_seconds: float = 120.0
    bandwidth: float = 1_000_000.0  # bytes/s of the simulated download
    install_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("fail", "late", "silent", "bad_fail"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.fail + self.late + self.silent > 1.0:
            raise ValueError("fail + late + silent must not exceed 1")
        if self.bandwidth <= 0 or self.install_seconds < 0 or self.late_seconds < 0:
            raise ValueError("bandwidth must be positive; install and late seconds >= 0")


@dataclass(frozen=True, slots=True)
class DeviceAnswer:
    """What a device reports at `at`: the version it now runs, or a failed install."""

    at: float
    device: int  # index in the fleet
    version: str
    failed: bool = False
    reason: str | None = None
    job: str | None = None


@dataclass
class UpdatePlan:
    """Jobs in, answers out at their times. Pure: `add_job` schedules, `due` pops."""

    faults: UpdateFaults
    seed: int = 1
    _queue: list[tuple[float, int, DeviceAnswer]] = field(default_factory=list)
    _seen_jobs: set[str] = field(default_factory=set)
    _order: int = 0
    scheduled: int = 0
    silent: int = 0

    def knows(self, job_id: str) -> bool:
        return job_id in self._seen_jobs

    def add_job(self, job_id: str, document: Mapping[str, Any], devices: Sequence[int],
                now: float) -> int:
        """Schedule the answers of `devices` to one job; returns how many will answer.
        A job seen before is ignored (the control plane lists it every poll)."""
        if job_id in self._seen_jobs:
            return 0
        self._seen_jobs.add(job_id)
        version = str(document.get("version", ""))
        rollback = document.get("operation") == "firmware-rollback"
        size = float(document.get("size", 0) or 0)
        answering = 0
        for device in devices:
            # Per device and version, not per job: the same fleet fails the same way
            # whatever the rollout's ids (tests and demos repeat).
            rnd = random.Random(f"{self.seed}:{device}:{version}:{rollback}")
            base = now + size / self.faults.bandwidth + self.faults.install_seconds \
                + rnd.random()
            failed = False
            reason = None
            if not rollback:
                draw = rnd.random()
                f = self.faults
                if version in f.bad_versions and rnd.random() < f.bad_fail:
                    failed, reason = True, "install verification failed (bad image)"
                elif draw < f.fail:
                    failed, reason = True, "not enough space to install"
                elif draw < f.fail + f.late:
                    base += f.late_seconds
                elif draw < f.fail + f.late + f.silent:
                    self.silent += 1
                    continue
            self._push(DeviceAnswer(at=base, device=device, version=version, failed=failed,
                                    reason=reason, job=job_id))
            answering += 1
        self.scheduled += answering
        return answering

    def _push(self, answer: DeviceAnswer) -> None:
        self._order += 1
        heapq.heappush(self._queue, (answer.at, self._order, answer))

    def due(self, now: float) -> list[DeviceAnswer]:
        out: list[DeviceAnswer] = []
        while self._queue and self._queue[0][0] <= now:
            out.append(heapq.heappop(self._queue)[2])
        return out

    @property
    def waiting(self) -> int:
        return len(self._queue)


async def watch_jobs(aws: AwsClients, plan: UpdatePlan, device_index: Mapping[str, int],
                     *, clock: Any = None, poll: float = JOB_POLL_SECONDS,
                     since: float | None = None) -> None:
    """Poll IoT Jobs until cancelled and schedule this fleet's answers (`device_index`: the
    fleet's device ids, as thing names, to their index). Jobs created before `since` (epoch
    seconds) are left alone: an earlier run of the fleet answered them."""
    import time

    now = clock or time.time
    iot = await aws.client("iot")
    while True:
        try:
            await _poll_once(iot, plan, device_index, now(), since)
        except Exception as exc:  # the simulator keeps playing; the next poll may pass
            log.warning("listing jobs failed", error=str(exc))
        await anyio.sleep(poll)


async def _poll_once(iot: Any, plan: UpdatePlan, device_index: Mapping[str, int],
                     now: float, since: float | None) -> None:
    params: dict[str, Any] = {"maxResults": 250}
    while True:
        with aws_errors():
            page = await iot.list_jobs(**params)
        for job in page.get("jobs", []):
            job_id = str(job["jobId"])
            if plan.knows(job_id):
                continue
            created = job.get("createdAt")
            if since is not None and created is not None and created.timestamp() < since:
                plan.add_job(job_id, {}, (), now)  # remembered as seen, nobody answers
                continue
            with aws_errors():
                document = json.loads((await iot.get_job_document(jobId=job_id))["document"])
            targets: list[int] = []
            exec_params: dict[str, Any] = {"jobId": job_id, "maxResults": 250}
            while True:
                with aws_errors():
                    executions = await iot.list_job_executions_for_job(**exec_params)
                for summary in executions.get("executionSummaries", []):
                    thing = str(summary.get("thingArn", "")).rsplit("/", 1)[-1]
                    if thing in device_index:
                        targets.append(device_index[thing])
                if not executions.get("nextToken"):
                    break
                exec_params["nextToken"] = executions["nextToken"]
            answering = plan.add_job(job_id, document, targets, now)
            if targets:
                log.debug("job received", job=job_id, devices=len(targets), answering=answering,
                         version=document.get("version"), operation=document.get("operation"))
        if not page.get("nextToken"):
            return
        params["nextToken"] = page["nextToken"]
