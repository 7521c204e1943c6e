"""Commanding devices: AWS IoT Jobs, one job per 100 devices of a batch.

A job's document names the rollout, the version to install, its SHA-256 and size, and where
to download it: the IoT pre-signed URL placeholder (`${aws:iot:s3-presigned-url:...}`), which
IoT Jobs replaces per device with a short-lived URL signed by the role the stack gives it
(`presignedUrlConfig`), so a device never holds credentials for the bucket.

Job ids are deterministic (`<rollout>-<w|r><wave>-<batch hash>-<n>`), so a batch commanded
again after its worker was killed asks for the same jobs: AWS answers
`ResourceAlreadyExistsException`, taken as done. The jobs are SNAPSHOT jobs: their targets
are fixed, and each has a timeout of the rollout's device timeout.

Devices answer through the device path, not through the job's status: a device reports its
new version in its telemetry (the devices context emits FirmwareVersionReported) or reports
the failure (FirmwareUpdateFailed). The firmware worker counts those events.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError

__all__ = ["TARGETS_PER_JOB", "DeviceCommander", "job_document", "job_ids"]

TARGETS_PER_JOB: Final = 100  # IoT Jobs: targets of one job


def job_ids(rollout_id: str, batch: str, count: int, *, rollback: bool = False) -> list[str]:
    """Deterministic ids of the `count` jobs of a batch (64 characters at most)."""
    digest = hashlib.sha256(batch.encode()).hexdigest()[:12]
    kind = "r" if rollback else "u"
    return [f"{rollout_id[:32]}-{kind}-{digest}-{n}" for n in range(count)]


def job_document(*, rollout_id: str, version: str, artifact: Mapping[str, Any],
                 rollback: bool = False) -> dict[str, Any]:
    bucket, key = artifact["bucket"], artifact["key"]
    return {
        "operation": "firmware-rollback" if rollback else "firmware-update",
        "rollout_id": rollout_id,
        "version": version,
        "sha256": artifact["sha256"],
        "size": int(artifact["size"]),
        "url": f"${{aws:iot:s3-presigned-url:https://{bucket}.s3.amazonaws.com/{key}}}",
    }


@dataclass
class DeviceCommander:
    """Creates the IoT jobs of a batch. `presign_role_arn`: the role IoT Jobs assumes to sign
    download URLs; `timeout_minutes`: the in-progress timeout of each device's execution."""

    aws: AwsClients
    account_id: str
    region: str
    presign_role_arn: str | None = None

    def thing_arn(self, device_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:thing/{device_id}"

    async def command(self, *, rollout_id: str, batch: str, devices: Sequence[str],
                      document: Mapping[str, Any], timeout_seconds: float,
                      rollback: bool = False) -> int:
        """Create the jobs for `devices` (at most 100 each); returns how many requests it
        sent. A job that exists already (a retry) counts as created."""
        iot = await self.aws.client("iot")
        count = math.ceil(len(devices) / TARGETS_PER_JOB)
        ids = job_ids(rollout_id, batch, count, rollback=rollback)
        body = json.dumps(dict(document))
        requests = 0
        for n, job_id in enumerate(ids):
            targets = [self.thing_arn(d) for d in
                       devices[n * TARGETS_PER_JOB:(n + 1) * TARGETS_PER_JOB]]
            params: dict[str, Any] = {
                "jobId": job_id, "targets": targets, "document": body,
                "targetSelection": "SNAPSHOT",
                "description": f"{document.get('operation')} {document.get('version')} "
                               f"(rollout {rollout_id})",
                "timeoutConfig": {"inProgressTimeoutInMinutes": max(
                    1, math.ceil(timeout_seconds / 60))},
            }
            if self.presign_role_arn:
                params["presignedUrlConfig"] = {"roleArn": self.presign_role_arn,
                                                "expiresInSec": 3600}
            requests += 1
            try:
                with aws_errors():
                    await iot.create_job(**params)
            except AwsRequestError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise
        return requests
