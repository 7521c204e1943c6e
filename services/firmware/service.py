"""What an operator does with firmware: upload, start, status, list, approve, pause, resume,
abort. `fleetline firmware ...` calls these; so could an HTTP API.

Starting a rollout is refused, with nothing started, when the version was never uploaded, it
is a downgrade without `allow_downgrade`, the zone is not this deployment's, a threshold is
out of range (`RolloutSpec.validate`), or an active rollout of the zone may target the same
devices (`RolloutSpec.overlaps`). The check and the new rollout commit together with the
zone's registry item, so two overlapping starts cannot both pass. The same client token
twice starts one rollout (the second call returns the first one's id); a token reused for a
different request is refused.

The workflow execution is named after the rollout id: starting it again (a retried start)
is refused by Step Functions as a duplicate, which counts as started.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from services.firmware._store import FirmwareStore, RolloutRecord, rollout_ref
from services.firmware.domain import RolloutCommand, RolloutCounts, RolloutSpec, RolloutState
from services.firmware.errors import RolloutRejected
from services.firmware.events import RolloutStarted
from services.firmware.lifecycle import Lifecycle, view_of, with_pending
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.errors import AwsRequestError
from shared.outbox import ConcurrencyConflictError, UnitOfWork
from shared.tracing import client_span, with_trace, xray_trace_header

__all__ = ["FirmwareService", "ServiceSettings"]


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    table: str
    bucket: str
    state_machine_arn: str
    zone: str

    @classmethod
    def from_resources(cls, resources: Resources, zone: str) -> ServiceSettings:
        return cls(table=resources.get("FirmwareTable"), bucket=resources.get("FirmwareBucket"),
                   state_machine_arn=resources.get("FirmwareRolloutStateMachine"), zone=zone)


def new_rollout_id() -> str:
    return f"r-{uuid.uuid4().hex[:16]}"


def _fingerprint(spec: RolloutSpec) -> str:
    values = {k: v for k, v in spec.as_dict().items() if k != "client_token"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class FirmwareService:
    def __init__(self, aws: AwsClients, settings: ServiceSettings) -> None:
        self._aws = aws
        self.settings = settings
        self.store = FirmwareStore(aws, settings.table)
        self.lifecycle = Lifecycle(aws, self.store)

    # -- artifacts ----------------------------------------------------------------------------

    async def upload(self, version: str, path: Path) -> dict[str, Any]:
        """Store the firmware file in S3 with its SHA-256 (S3 checks it on arrival) and
        record it. The same file again is a no-op; another file for an uploaded version is
        refused (versions are immutable). Raises RolloutRejected naming the field."""
        from services.firmware.domain import parse_version

        try:
            parse_version(version)
        except ValueError as exc:
            raise RolloutRejected(str(exc), field="version") from None
        file = anyio.Path(path)
        if not await file.is_file():
            raise RolloutRejected(f"{path} is not a file", field="file")
        data = await file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        existing = await self.store.artifact(version)
        if existing is not None:
            if existing.get("sha256") != digest:
                raise RolloutRejected(
                    f"{version} is uploaded already with another file (sha256 "
                    f"{existing.get('sha256')}); versions are immutable", field="version")
            return existing
        import base64

        key = f"firmware/{version}/{path.name}"
        s3 = await self._aws.client("s3")
        with aws_errors():
            await s3.put_object(
                Bucket=self.settings.bucket, Key=key, Body=data,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
                Metadata={"sha256": digest, "version": version})
        artifact = {"version": version, "bucket": self.settings.bucket, "key": key,
                    "sha256": digest, "size": len(data),
                    "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not await self.store.put_artifact(artifact):
            return await self.store.artifact(version) or artifact
        return artifact

    # -- start --------------------------------------------------------------------------------

    async def start(self, spec: RolloutSpec) -> tuple[str, bool]:
        """Start a rollout; returns (rollout id, created). `created` is False when the
        client token had started it before. Raises RolloutRejected (nothing started)."""
        if spec.client_token:
            owner = await self.store.token_owner(spec.client_token)
            if owner is not None:
                return self._same_request(owner, spec)
        spec.validate(deployment_zone=self.settings.zone,
                      known_versions=await self.store.known_versions())
        rollout_id = new_rollout_id()
        for _attempt in range(5):
            uow = UnitOfWork(self._aws)
            registry = await uow.load(self.store.registry_ref(spec.zone))
            active = dict(registry.state.get("rollouts") or {})
            for other_id, other in active.items():
                other_spec = RolloutSpec.from_mapping(other)
                if spec.overlaps(other_spec):
                    scope = f"tenant {spec.tenant}" if spec.tenant else f"zone {spec.zone}"
                    raise RolloutRejected(
                        f"devices of {scope} are in rollout {other_id} ({other_spec.version}, "
                        "active): wait for it to end or abort it", field="tenant")
            meta = await uow.load(rollout_ref(self.settings.table, rollout_id))
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            state = {"spec": spec.as_dict(), "state": RolloutState.RUNNING.value,
                     "created_at": created, "gsi1pk": "ROLLOUT",
                     "gsi1sk": f"{created}#{rollout_id}", "waves": []}
            record = RolloutRecord(rollout_id=rollout_id, spec=spec, state=RolloutState.RUNNING,
                                   created_at=created)
            uow.save(meta, state, events=[RolloutStarted(
                rollout=view_of(record), approval=spec.approval, canary=spec.canary,
                growth=spec.growth, success_threshold=spec.success_threshold,
                abort_threshold=spec.abort_threshold)])
            uow.save(registry, {**registry.state,
                                "rollouts": {**active, rollout_id: spec.as_dict()}})
            if spec.client_token:
                token = await uow.load(self.store.token_ref(spec.client_token))
                uow.save(token, {"rollout_id": rollout_id, "fingerprint": _fingerprint(spec)})
            try:
                await uow.commit()
            except ConcurrencyConflictError:
                if spec.client_token:
                    owner = await self.store.token_owner(spec.client_token)
                    if owner is not None:
                        return self._same_request(owner, spec)
                continue  # another start or end changed the registry: check again
            await self._start_execution(rollout_id, spec)
            return rollout_id, True
        raise RolloutRejected("the zone's rollouts kept changing; try again")

    def _same_request(self, owner: tuple[str, str], spec: RolloutSpec) -> tuple[str, bool]:
        rollout_id, fingerprint = owner
        if fingerprint != _fingerprint(spec):
            raise RolloutRejected(
                f"was used for another request (rollout {rollout_id})", field="client_token")
        return rollout_id, False

    async def _start_execution(self, rollout_id: str, spec: RolloutSpec) -> None:
        sfn = await self._aws.client("stepfunctions")
        workflow_input = {
            "rollout_id": rollout_id,
            "abort_threshold": spec.abort_threshold,
            "batch_size": spec.batch_size,
            "max_concurrency": spec.max_concurrency,
            "bucket": self.settings.bucket,
        }
        try:
            # The execution continues this trace: its input's `trace` reaches every task
            # (the workflow passes it down), so the waves are spans under the start.
            with aws_errors(), client_span("StepFunctions.StartExecution", attributes={
                    "rpc.system": "aws-api", "rpc.service": "StepFunctions",
                    "rpc.method": "StartExecution", "rollout.id": rollout_id}):
                options: dict[str, Any] = {}
                header = xray_trace_header()
                if header:
                    options["traceHeader"] = header
                started = await sfn.start_execution(
                    stateMachineArn=self.settings.state_machine_arn, name=rollout_id,
                    input=json.dumps(with_trace(workflow_input)), **options)
        except AwsRequestError as exc:
            if exc.code != "ExecutionAlreadyExists":
                raise
            return
        arn = str(started["executionArn"])
        await self.lifecycle.change(rollout_id, lambda r: None if r.execution_arn else
                                    _set(execution_arn=arn))

    # -- reading ------------------------------------------------------------------------------

    async def status(self, rollout_id: str) -> dict[str, Any]:
        """Raises RolloutNotFound."""
        record = await self.store.rollout(UnitOfWork(self._aws), rollout_id)
        waves = await self.store.waves(rollout_id)
        total = RolloutCounts()
        wave_views = []
        for wave in waves:
            counts = with_pending(wave.counts, wave.size)
            total = total + counts
            state = "completed" if wave.completed else "running" if wave.started else "planned"
            wave_views.append({"wave": wave.wave, "size": wave.size, "state": state,
                               "counts": counts.as_dict()})
        spec = record.spec
        return {
            "rollout_id": rollout_id, "state": record.state.value, "reason": record.reason,
            "version": spec.version, "zone": spec.zone, "tenant": spec.tenant,
            "from_version": spec.from_version, "created_at": record.created_at,
            "approval": spec.approval, "devices_planned": record.devices_planned,
            "counts": total.as_dict(), "waves": wave_views,
            "execution_arn": record.execution_arn, "spec": spec.as_dict(),
        }

    async def list(self, limit: int = 50) -> list[dict[str, Any]]:
        return [{"rollout_id": r.rollout_id, "state": r.state.value, "version": r.spec.version,
                 "zone": r.spec.zone, "tenant": r.spec.tenant, "created_at": r.created_at,
                 "devices_planned": r.devices_planned}
                for r in await self.store.list_rollouts(limit)]

    # -- operator commands --------------------------------------------------------------------

    async def approve(self, rollout_id: str) -> RolloutRecord:
        return await self.lifecycle.command(rollout_id, RolloutCommand.APPROVE)

    async def pause(self, rollout_id: str) -> RolloutRecord:
        return await self.lifecycle.command(rollout_id, RolloutCommand.PAUSE)

    async def resume(self, rollout_id: str) -> RolloutRecord:
        return await self.lifecycle.command(rollout_id, RolloutCommand.RESUME)

    async def abort(self, rollout_id: str, reason: str | None = None) -> RolloutRecord:
        return await self.lifecycle.command(rollout_id, RolloutCommand.ABORT, reason=reason)


def _set(**changes: Any) -> Any:
    from services.firmware.lifecycle import Change

    return Change(dict(changes))


def rollout_summary(status: Mapping[str, Any]) -> str:
    counts = status["counts"]
    return (f"{status['rollout_id']} {status['state']} {status['version']} "
            + " ".join(f"{k}={v}" for k, v in counts.items()))
