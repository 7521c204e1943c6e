"""The rollout workflow's callback tasks, run by the firmware worker.

Every Task of `deploy/statemachines/firmware-rollout.asl.json` is
`sqs:sendMessage.waitForTaskToken` to FirmwareTasksQueue with an `action`:

    plan            stream the target into wave manifests (services.firmware.planner)
    gate            before a wave: proceed, or park the token (approval, pause) or stop
    run_batch       ONE token per batch of up to 1,000 devices (a Distributed Map child):
                    claim the devices, command them (IoT Jobs), heartbeat while their
                    answers are counted (services.firmware.acks), time out the silent ones
                    at the deadline, answer with the batch's counts
    complete_wave   after a wave: continue, roll back (aborted) or halt (short of success)
    plan_rollback   the devices this rollout may have updated, into a rollback manifest
    rollback_batch  command a batch of them back to their previous version; wait as above
    finish          the rollout's end state and its RolloutCompleted event

A batch's devices are claimed with conditional writes (a device that another rollout is
updating right now is skipped), its deadline is fixed when the first holder opens it, and
its counters move only with device transitions, so a holder killed mid-batch (its
heartbeats stop; the child's Retry sends the task again) is replaced by one that commands
no device twice and counts none twice.

Abort: when a batch completes, the rollout's cumulative counts are checked against its
abort threshold (`domain.abort_due`); once aborted, every batch that starts fails at once
(`Rollout.Aborted`, its devices not commanded), batches in flight stop waiting, the
Distributed Map counts their devices as failed (its ToleratedFailurePercentage is the abort
threshold, so it stops starting children), and `complete_wave` sends the workflow to the
rollback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import structlog
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.firmware._store import (
    DeviceRecord,
    FirmwareStore,
    RolloutRecord,
    batch_key,
    counter_update,
)
from services.firmware.commands import DeviceCommander, job_document
from services.firmware.domain import (
    DeviceStatus,
    RolloutCommand,
    RolloutCounts,
    RolloutState,
    abort_due,
    wave_reached_success,
)
from services.firmware.errors import ABORTED_ERROR, WorkflowError
from services.firmware.events import WaveCompleted
from services.firmware.lifecycle import Change, Lifecycle, view_of, with_pending
from services.firmware.planner import (
    ManifestWriter,
    manifest_items,
    plan_rollout,
    read_model_source,
)
from shared.aws import AwsClients
from shared.callbacks import TaskAnswers, heartbeating, task_token
from shared.consumers import BatchHandler, HandlerContext, RetryLater, batch_handler, json_object
from shared.errors import is_retryable
from shared.outbox import UnitOfWork

__all__ = ["FirmwareTasks", "TaskRequest", "TaskSettings"]

log = structlog.get_logger("services.firmware.tasks")

PAUSED_RETRY_SECONDS: Final = 5.0
ABORT_CHECK_SECONDS: Final = 3.0  # how often a waiting batch looks for an abort
_DEVICES_PER_TRANSACTION: Final = 98  # + the batch's and the wave's counters = 100


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    action: str
    task_token: str = Field(min_length=1)
    rollout_id: str = Field(min_length=1)
    wave: int = 0
    items: tuple[dict[str, Any], ...] = ()
    outcome: str = ""
    beat_seconds: float = Field(default=20.0, gt=0)  # how often to heartbeat a token


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    """Where things are, and how often a batch holder looks at its counters."""

    table: str
    bucket: str  # manifests, outcomes, rollback manifests
    read_model_table: str
    account_id: str
    region: str
    presign_role_arn: str | None = None
    poll_seconds: float = 1.0


class FirmwareTasks:
    def __init__(self, aws: AwsClients, settings: TaskSettings) -> None:
        self._aws = aws
        self.settings = settings
        self.store = FirmwareStore(aws, settings.table)
        self.lifecycle = Lifecycle(aws, self.store)
        self.answers = TaskAnswers(aws)
        self.commander = DeviceCommander(aws, account_id=settings.account_id,
                                         region=settings.region,
                                         presign_role_arn=settings.presign_role_arn)
        self._actions = {
            "plan": self.plan, "gate": self.gate, "run_batch": self.run_batch,
            "complete_wave": self.complete_wave, "plan_rollback": self.plan_rollback,
            "rollback_batch": self.rollback_batch, "finish": self.finish,
        }

    def batch_handler(self, *, concurrency: int | None = None) -> BatchHandler:
        return batch_handler(self.handle, decode=json_object, concurrency=concurrency)

    async def handle(self, body: dict[str, Any], ctx: HandlerContext) -> None:
        """One task message. The action's result answers the token; a WorkflowError answers
        with its error name; a retryable error retries the message (its token stays valid
        while the state's heartbeat or timeout allows); anything else fails the task with
        Rollout.Internal so the workflow's Catch decides.

        Raises InvalidMessageError when there is no token to answer (the DLQ keeps it)."""
        trace.get_current_span().set_attribute("rollout.id", str(body.get("rollout_id", "")))
        try:
            task = TaskRequest.model_validate(body)
        except ValidationError as exc:
            token = task_token(body, reason=f"unreadable task: {exc}")
            await self.answers.fail(token, "Rollout.InvalidTask", str(exc)[:2000])
            return
        action = self._actions.get(task.action)
        if action is None:
            await self.answers.fail(task.task_token, "Rollout.InvalidTask",
                                    f"no action {task.action!r}")
            return
        bound = ctx.log.bind(action=task.action, rollout_id=task.rollout_id, wave=task.wave)
        try:
            result = await action(task, ctx)
        except WorkflowError as exc:
            bound.info("task failed", error=exc.error_name, reason=str(exc))
            await self.answers.fail(task.task_token, exc.error_name, str(exc))
            return
        except RetryLater:
            raise
        except Exception as exc:
            if is_retryable(exc):
                raise
            bound.error("task failed", error=str(exc), exc_info=True)
            await self.answers.fail(task.task_token, "Rollout.Internal",
                                    {"message": str(exc)[:1000], "action": task.action})
            return
        if result is not None:
            await self.answers.succeed(task.task_token, result)
            bound.info("task answered")

    # -- plan ---------------------------------------------------------------------------------

    async def plan(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any]:
        uow = UnitOfWork(self._aws)
        record = await self.store.rollout(uow, task.rollout_id)
        if record.aggregate is not None and record.aggregate.state.get("planned"):
            return {"waves": [dict(w) for w in record.waves], "total": record.devices_planned}
        spec = record.spec
        source = read_model_source(self._aws, self.settings.read_model_table, spec)
        async with heartbeating(self.answers, task.task_token,
                                every=task.beat_seconds):
            waves = await plan_rollout(
                spec, task.rollout_id, source,
                lambda n: ManifestWriter(self._aws, self.settings.bucket, task.rollout_id, n))
        entries = [self.store.wave_put(task.rollout_id, w.wave, w.size) for w in waves]
        for start in range(0, len(entries), 100):  # created once: a retried plan finds them
            await self.store.transact(entries[start:start + 100])
        planned = [w.as_dict() for w in waves]
        await self.lifecycle.change(task.rollout_id, lambda r: Change(
            {"waves": planned, "planned": True}))
        log.info("rollout planned", rollout_id=task.rollout_id, waves=len(planned),
                 devices=sum(w.size for w in waves))
        return {"waves": planned, "total": sum(w.size for w in waves)}

    # -- gate ---------------------------------------------------------------------------------

    async def gate(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any] | None:
        outcome = await self.lifecycle.park_gate(task.rollout_id, task.task_token, task.wave)
        if outcome == "parked":
            return None  # answered by approve / resume / abort
        return {"proceed": outcome == "proceed"}

    # -- batches ------------------------------------------------------------------------------

    async def run_batch(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any]:
        return await self._batch(task, ctx, rollback=False)

    async def rollback_batch(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any]:
        return await self._batch(task, ctx, rollback=True)

    async def _batch(self, task: TaskRequest, ctx: HandlerContext, *,
                     rollback: bool) -> dict[str, Any]:
        if not task.items:
            return {"counts": RolloutCounts().as_dict(), "devices": 0}
        uow = UnitOfWork(self._aws)
        record = await self.store.rollout(uow, task.rollout_id)
        spec = record.spec
        if not rollback:
            if record.state in (RolloutState.ABORTED, RolloutState.FAILED,
                                RolloutState.ROLLED_BACK):
                raise WorkflowError(f"rollout is {record.state.value}: batch not started",
                                    error_name=ABORTED_ERROR)
            if record.state is RolloutState.PAUSED:
                await self.answers.beat(task.task_token)
                raise RetryLater("rollout paused", delay=PAUSED_RETRY_SECONDS)
        devices = [str(item["device_id"]) for item in task.items]
        key = batch_key(task.wave, devices[0], rollback=rollback)
        batch = await self.store.open_batch(task.rollout_id, key, size=len(devices),
                                            deadline=time.time() + spec.device_timeout)
        async with heartbeating(self.answers, task.task_token,
                                every=task.beat_seconds):
            if not batch.commanded:
                claimed = await self._claim(task, key, record, rollback=rollback)
                await self._command(task, key, record, claimed, rollback=rollback)
                await self.store.mark_commanded(task.rollout_id, key, held=len(claimed))
            counts = await self._wait(task, key, batch.deadline, rollback=rollback)
            if time.time() >= batch.deadline:
                await self._time_out(task, key, rollback=rollback)
                counts = await self._batch_counts(task.rollout_id, key)
        result = {"batch": key, "devices": len(devices), "counts": counts.as_dict()}
        if rollback:
            return result
        total = await self.lifecycle.counts(task.rollout_id)
        if abort_due(total, abort_threshold=spec.abort_threshold,
                     min_executed=spec.min_executed):
            await self.lifecycle.abort(
                task.rollout_id,
                f"{total.failure_share:.1f} % of {total.executed} devices failed or timed out "
                f"(abort threshold {spec.abort_threshold:g} %)")
        if await self.store.current_state(task.rollout_id) is RolloutState.ABORTED:
            raise WorkflowError(json.dumps(result), error_name=ABORTED_ERROR)
        return result

    async def _claim(self, task: TaskRequest, key: str, record: RolloutRecord, *,
                     rollback: bool) -> list[str]:
        """Take the batch's devices: write each device's item for this rollout (conditional:
        not while another rollout is updating it), counting them in progress. Returns the
        devices this rollout holds (a second holder finds the first one's). For a rollback
        batch: mark this rollout's devices that may have updated as rolling back.

        A claim first goes out without reading anything (a conditional Put per device: no
        item, or one of another rollout not updating it now); only a transaction that one of
        its conditions cancelled (a retried batch, a device another rollout holds) is read
        and decided device by device."""
        items = {str(i["device_id"]): i for i in task.items}
        held: set[str] = set()  # a retried chunk decides again: a set counts each once

        def claimed(device_id: str, version: int = 0) -> DeviceRecord:
            item = items[device_id]
            return DeviceRecord(
                device_id=device_id, rollout_id=task.rollout_id, wave=task.wave, batch=key,
                tenant=str(item.get("tenant", "")), from_version=item.get("from_version"),
                target_version=record.spec.version, outcome=DeviceStatus.IN_PROGRESS.value,
                version=version)

        def decide(device_id: str, existing: DeviceRecord | None
                   ) -> tuple[DeviceRecord | None, dict[str, int]]:
            if rollback:
                if existing is None or existing.rollout_id != task.rollout_id or \
                        existing.outcome == DeviceStatus.FAILED.value:
                    return None, {}  # not ours, or it said it did not install
                held.add(device_id)
                if existing.phase == "rollback":
                    return None, {}
                return existing.but(phase="rollback", rollback_batch=key), {}
            if existing is not None and existing.rollout_id == task.rollout_id:
                held.add(device_id)  # claimed by an earlier holder of this batch
                return None, {}
            if existing is not None and existing.outcome == DeviceStatus.IN_PROGRESS.value:
                log.warning("device is being updated by another rollout; skipped",
                            device_id=device_id, other=existing.rollout_id)
                return None, {}
            held.add(device_id)
            return claimed(device_id, existing.version if existing else 0), {
                DeviceStatus.IN_PROGRESS.value: 1}

        ids = list(items)
        if rollback:
            await self._transition(task, key, ids, decide)
            return [d for d in ids if d in held]
        for start in range(0, len(ids), _DEVICES_PER_TRANSACTION):
            chunk = ids[start:start + _DEVICES_PER_TRANSACTION]
            entries = [self.store.device_put(claimed(d), claim_for=task.rollout_id)
                       for d in chunk]
            entries.extend(self._counters(task.rollout_id, task.wave, key,
                                          {DeviceStatus.IN_PROGRESS.value: len(chunk)}))
            if not await self.store.transact(entries):
                held.update(chunk)
            else:  # a device of the chunk was not free: read and decide one by one
                await self._transition(task, key, chunk, decide)
        return [d for d in ids if d in held]

    async def _transition(self, task: TaskRequest, key: str, ids: Sequence[str],
                          decide: Any) -> int:
        """Write the device changes `decide(device_id, current)` asks for, with their counter
        deltas, in transactions of at most 98 devices + the batch's and the wave's counters
        (each chunk carries the counts of its own devices: all or nothing). A chunk whose
        condition failed (a device changed meanwhile) is read and decided again. Returns how
        many devices changed."""
        changed = 0
        for start in range(0, len(ids), _DEVICES_PER_TRANSACTION):
            chunk = list(ids[start:start + _DEVICES_PER_TRANSACTION])
            for _attempt in range(5):
                current = await self.store.device_records(chunk)
                entries: list[dict[str, Any]] = []
                deltas: dict[str, int] = {}
                count = 0
                for device_id in chunk:
                    new, delta = decide(device_id, current.get(device_id))
                    if new is None:
                        continue
                    entries.append(self.store.device_put(new))
                    count += 1
                    for name, n in delta.items():
                        deltas[name] = deltas.get(name, 0) + n
                if not entries:
                    break
                deltas = {k: v for k, v in deltas.items() if v}
                if deltas:
                    entries.extend(self._counters(task.rollout_id, task.wave, key, deltas))
                if not await self.store.transact(entries):
                    changed += count
                    break
            else:
                raise RetryLater("devices kept changing while the batch wrote them")
        return changed

    def _counters(self, rollout_id: str, wave: int, key: str,
                  deltas: Mapping[str, int]) -> list[dict[str, Any]]:
        pk = f"ROLLOUT#{rollout_id}"
        return [counter_update(self.settings.table, {"pk": pk, "sk": key}, deltas),
                counter_update(self.settings.table, {"pk": pk, "sk": f"WAVE#{wave:04d}"},
                               deltas)]

    async def _command(self, task: TaskRequest, key: str, record: RolloutRecord,
                       devices: Sequence[str], *, rollback: bool) -> None:
        if not devices:
            return
        spec = record.spec
        if not rollback:
            artifact = await self.store.artifact(spec.version)
            if artifact is None:
                raise WorkflowError(f"firmware {spec.version} is no longer uploaded")
            document = job_document(rollout_id=task.rollout_id, version=spec.version,
                                    artifact=artifact)
            await self.commander.command(rollout_id=task.rollout_id, batch=key, devices=devices,
                                         document=document, timeout_seconds=spec.device_timeout)
            return
        # Back to each device's previous version: one set of jobs per version.
        by_version: dict[str, list[str]] = {}
        for item in task.items:
            if str(item["device_id"]) in devices and item.get("from_version"):
                by_version.setdefault(str(item["from_version"]), []).append(
                    str(item["device_id"]))
        for version, group in sorted(by_version.items()):
            artifact = await self.store.artifact(version) or {
                "bucket": self.settings.bucket, "key": f"firmware/{version}",
                "sha256": "", "size": 0}
            document = job_document(rollout_id=task.rollout_id, version=version,
                                    artifact=artifact, rollback=True)
            await self.commander.command(rollout_id=task.rollout_id, batch=f"{key}#{version}",
                                         devices=group, document=document,
                                         timeout_seconds=spec.device_timeout, rollback=True)

    async def _batch_counts(self, rollout_id: str, key: str) -> RolloutCounts:
        batch = await self.store.batch(rollout_id, key)
        return batch.counts if batch is not None else RolloutCounts()

    async def _wait(self, task: TaskRequest, key: str, deadline: float, *,
                    rollback: bool) -> RolloutCounts:
        """Until every device of the batch has an outcome, the deadline passes, or (an update
        batch) the rollout is aborted."""
        began = time.monotonic()
        checked = began
        while True:
            batch = await self.store.batch(task.rollout_id, key)
            assert batch is not None
            done = batch.counts.rolled_back if rollback else batch.counts.executed
            if batch.commanded and done >= batch.held:
                return batch.counts
            if time.time() >= deadline:
                return batch.counts
            if not rollback and time.monotonic() - checked >= ABORT_CHECK_SECONDS:
                checked = time.monotonic()  # an abort stops the wait within a few seconds
                if await self.store.current_state(task.rollout_id) is RolloutState.ABORTED:
                    return batch.counts
            # Every poll_seconds at first (most devices answer within seconds), then up to
            # five times as long: a batch waiting on a long device timeout costs a GetItem
            # every few seconds, not every second.
            poll = self.settings.poll_seconds
            interval = min(poll * (1 + (time.monotonic() - began) / 10), poll * 5)
            await anyio.sleep(min(interval, max(0.05, deadline - time.time())))

    async def _time_out(self, task: TaskRequest, key: str, *, rollback: bool) -> None:
        """At the deadline: every device of the batch still in progress is timed out, once
        (a late answer then changes nothing). Rollback batches leave their silent devices as
        they are: they were counted when the update ended."""
        if rollback:
            return

        def decide(device_id: str, device: DeviceRecord | None
                   ) -> tuple[DeviceRecord | None, dict[str, int]]:
            if device is None or device.rollout_id != task.rollout_id or device.batch != key \
                    or device.outcome != DeviceStatus.IN_PROGRESS.value:
                return None, {}
            return device.but(outcome=DeviceStatus.TIMED_OUT.value), {
                DeviceStatus.IN_PROGRESS.value: -1, DeviceStatus.TIMED_OUT.value: 1}

        silent = await self._transition(task, key, [str(i["device_id"]) for i in task.items],
                                        decide)
        if silent:
            log.info("devices timed out", rollout_id=task.rollout_id, batch=key, devices=silent)

    # -- waves and the end --------------------------------------------------------------------

    async def complete_wave(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any]:
        record = await self.store.rollout(UnitOfWork(self._aws), task.rollout_id)
        waves = {w.wave: w for w in await self.store.waves(task.rollout_id)}
        wave = waves.get(task.wave)
        if record.state is RolloutState.ABORTED:
            return {"decision": "rollback"}
        if wave is None:
            return {"decision": "continue"}
        counts = with_pending(wave.counts, wave.size)
        reached = wave_reached_success(counts, size=wave.size,
                                       success_threshold=record.spec.success_threshold)
        if await self.store.mark_wave(task.rollout_id, task.wave, "completed"):
            total = await self.lifecycle.counts(task.rollout_id)
            await self.lifecycle.change(task.rollout_id, lambda r: Change({}, [WaveCompleted(
                rollout=view_of(r, total), wave=task.wave, size=wave.size,
                wave_counts=counts.as_dict(), reached_success=reached)]))
        if not reached:
            share = 100.0 * counts.succeeded / wave.size if wave.size else 100.0
            await self.lifecycle.finish(
                task.rollout_id, RolloutCommand.FAIL,
                f"wave {task.wave} reached {share:.1f} % success, short of "
                f"{record.spec.success_threshold:g} %: later waves not started")
            return {"decision": "halt"}
        return {"decision": "continue"}

    async def plan_rollback(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any]:
        """Every device of the waves that started whose update may have happened (succeeded,
        timed out, or still in progress when the rollout stopped) and that has a version to
        go back to, into one manifest. Only an aborted rollout pays for this: the started
        waves' manifests streamed from S3, one BatchGetItem per 100 of their devices."""
        record = await self.store.rollout(UnitOfWork(self._aws), task.rollout_id)
        started = {w.wave for w in await self.store.waves(task.rollout_id)
                   if w.started or w.counts.in_progress or w.counts.executed}
        writer = ManifestWriter(self._aws, self.settings.bucket, task.rollout_id, 1,
                                key_of=lambda _wave: f"rollouts/{task.rollout_id}/rollback.json")
        async with heartbeating(self.answers, task.task_token, every=task.beat_seconds):
            for planned in record.waves:
                if int(planned["wave"]) not in started:
                    continue
                async for chunk in manifest_items(self._aws, str(planned["bucket"]),
                                                  str(planned["key"])):
                    current = await self.store.device_records(
                        [str(i["device_id"]) for i in chunk])
                    for device_id, device in current.items():
                        if device.rollout_id != task.rollout_id or \
                                device.outcome == DeviceStatus.FAILED.value or \
                                not device.from_version:
                            continue
                        await writer.add(0, {"device_id": device_id, "tenant": device.tenant,
                                             "from_version": device.from_version})
            written = (await writer.close())[0]
        return {"bucket": written.bucket, "key": written.key, "size": written.size}

    async def finish(self, task: TaskRequest, ctx: HandlerContext) -> dict[str, Any]:
        command = {"succeeded": RolloutCommand.SUCCEED, "rolled_back":
                   RolloutCommand.FINISH_ROLLBACK}.get(task.outcome, RolloutCommand.FAIL)
        reason = None if command is not RolloutCommand.FAIL else (
            "the workflow failed" if task.outcome == "failed" else None)
        record = await self.lifecycle.finish(task.rollout_id, command, reason)
        return {"state": record.state.value}


