"""Changes of a rollout's state, with the events they publish, in one conditional write.

Every change loads the rollout item, asks a pure function what to change, and commits the
new state and its events together (shared.outbox.UnitOfWork: one PutItem conditional on
the version read). A concurrent change makes the commit fail; the change is then decided
again on the fresh item (a few times), so two operators, or an operator and the workflow,
never overwrite each other.

The gate token: when the workflow reaches a wave that must wait (approval, or a paused
rollout), the worker parks the task token in the rollout item instead of answering.
`approve`, `resume` and `abort` answer it once the state change is committed, then clear
it; a command repeated after a lost answer finds the token still parked and answers again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from services.firmware._store import FirmwareStore, RolloutRecord
from services.firmware.domain import (
    RolloutCommand,
    RolloutCounts,
    RolloutState,
    is_active,
    next_state,
)
from services.firmware.errors import RolloutBusy
from services.firmware.events import (
    RolloutAborted,
    RolloutApprovalRequested,
    RolloutCompleted,
    RolloutView,
    WaveStarted,
)
from shared.aws import AwsClients
from shared.callbacks import TaskAnswers
from shared.outbox import ConcurrencyConflictError, UnitOfWork

__all__ = ["Change", "Lifecycle", "view_of"]

_ATTEMPTS: Final = 6
log = structlog.get_logger("services.firmware.lifecycle")


def view_of(record: RolloutRecord, counts: RolloutCounts | None = None,
            state: RolloutState | None = None) -> RolloutView:
    spec = record.spec
    return RolloutView(
        rollout_id=record.rollout_id, version=spec.version, zone=spec.zone, tenant=spec.tenant,
        from_version=spec.from_version, state=(state or record.state).value,
        counts=(counts or RolloutCounts()).as_dict(), waves_planned=len(record.waves),
        devices_planned=record.devices_planned)


@dataclass(frozen=True)
class Change:
    """What to write: attribute changes of the rollout item (None removes one) and events."""

    changes: dict[str, Any]
    events: Sequence[Any] = ()


Decide = Callable[[RolloutRecord], Change | None]


class Lifecycle:
    def __init__(self, aws: AwsClients, store: FirmwareStore) -> None:
        self._aws = aws
        self.store = store
        self.answers = TaskAnswers(aws)

    async def counts(self, rollout_id: str) -> RolloutCounts:
        """The rollout's device counts: the sum of its waves' (pending = planned - the rest)."""
        total = RolloutCounts()
        for wave in await self.store.waves(rollout_id):
            total = total + with_pending(wave.counts, wave.size)
        return total

    async def change(self, rollout_id: str, decide: Decide) -> RolloutRecord:
        """Apply `decide`'s change to the rollout (None: nothing to do). Returns the record
        after it. Raises RolloutNotFound, InvalidTransition (from `decide`), RolloutBusy
        when it kept changing underneath."""
        for _ in range(_ATTEMPTS):
            uow = UnitOfWork(self._aws)
            record = await self.store.rollout(uow, rollout_id)
            change = decide(record)
            if change is None:
                return record
            state = self.store.rollout_state(record, **change.changes)
            assert record.aggregate is not None
            uow.save(record.aggregate, state, events=list(change.events))
            if is_active(record.state) and not is_active(RolloutState(state["state"])):
                # The rollout ends: it leaves the zone's registry in the same transaction.
                registry = await uow.load(self.store.registry_ref(record.spec.zone))
                active = dict(registry.state.get("rollouts") or {})
                if active.pop(rollout_id, None) is not None:
                    uow.save(registry, {**registry.state, "rollouts": active})
            try:
                await uow.commit()
            except ConcurrencyConflictError:
                continue
            return self.store.rollout_from(type(record.aggregate)(
                ref=record.aggregate.ref, state=state, version=record.aggregate.version + 1,
                last_sequence=record.aggregate.last_sequence + len(change.events)))
        raise RolloutBusy(f"rollout {rollout_id} kept changing; try again")

    async def command(self, rollout_id: str, command: RolloutCommand, *,
                      reason: str | None = None) -> RolloutRecord:
        """An operator's approve / pause / resume / abort. Raises InvalidTransition."""
        counts = await self.counts(rollout_id)

        def decide(record: RolloutRecord) -> Change | None:
            target = _TARGET[command]
            if record.state is target and record.gate_token is None:
                return None  # repeated: already done
            if record.state is target:
                return Change({})  # the token is still parked: answered below
            after = next_state(record.state, command)
            changes: dict[str, Any] = {"state": after}
            events: list[Any] = []
            view = view_of(record, counts, after)
            if command is RolloutCommand.APPROVE:
                changes["approved_wave"] = _gate_wave(record)
                events.append(WaveStarted(rollout=view, wave=_gate_wave(record),
                                          size=_wave_size(record, _gate_wave(record))))
            elif command is RolloutCommand.RESUME and record.gate_token is not None:
                events.append(WaveStarted(rollout=view, wave=_gate_wave(record),
                                          size=_wave_size(record, _gate_wave(record))))
            elif command is RolloutCommand.ABORT:
                changes["reason"] = reason or "aborted by an operator"
                events.append(RolloutAborted(rollout=view, reason=changes["reason"],
                                             by_operator=True))
            return Change(changes, events)

        record = await self.change(rollout_id, decide)
        if record.gate_token is not None and record.state is not RolloutState.PAUSED and \
                record.state is not RolloutState.WAITING_APPROVAL:
            proceed = record.state is RolloutState.RUNNING
            if proceed:
                await self.store.mark_wave(rollout_id, _gate_wave(record), "started")
            await self.answers.succeed(record.gate_token, {"proceed": proceed})
            record = await self.change(rollout_id, lambda r: Change(
                {"gate_token": None}) if r.gate_token == record.gate_token else None)
        return record

    async def park_gate(self, rollout_id: str, token: str, wave: int) -> str:
        """The workflow reached wave `wave`'s gate. Returns "proceed", "stop" or "parked"
        (the token is kept until an operator approves, resumes or aborts)."""
        outcome = ""
        counts = await self.counts(rollout_id)

        def decide(record: RolloutRecord) -> Change | None:
            nonlocal outcome
            spec = record.spec
            state = record.state
            if state in (RolloutState.ABORTED, RolloutState.FAILED, RolloutState.ROLLED_BACK,
                         RolloutState.SUCCEEDED):
                outcome = "stop"
                return None
            if state is RolloutState.PAUSED:
                outcome = "parked"
                return Change({"gate_token": token, "gate_wave": wave})
            approved = int((record.aggregate.state if record.aggregate else {}).get(
                "approved_wave", 0) or 0)
            if spec.approval and wave > 0 and approved < wave:
                outcome = "parked"
                after = next_state(state, RolloutCommand.AWAIT_APPROVAL) \
                    if state is RolloutState.RUNNING else state
                return Change({"state": after, "gate_token": token, "gate_wave": wave},
                              [RolloutApprovalRequested(rollout=view_of(record, counts, after),
                                                       next_wave=wave)])
            outcome = "proceed"
            return Change({"gate_token": None, "gate_wave": wave},
                          [WaveStarted(rollout=view_of(record, counts),
                                       wave=wave, size=_wave_size(record, wave))])

        await self.change(rollout_id, decide)
        if outcome == "proceed":
            await self.store.mark_wave(rollout_id, wave, "started")
        return outcome

    async def abort(self, rollout_id: str, reason: str) -> RolloutRecord:
        """The abort threshold was crossed: RUNNING (or paused / waiting) -> ABORTED once."""
        counts = await self.counts(rollout_id)

        def decide(record: RolloutRecord) -> Change | None:
            if record.state in (RolloutState.ABORTED, RolloutState.ROLLED_BACK,
                                RolloutState.FAILED, RolloutState.SUCCEEDED):
                return None
            after = next_state(record.state, RolloutCommand.ABORT)
            return Change({"state": after, "reason": reason},
                          [RolloutAborted(rollout=view_of(record, counts, after),
                                          reason=reason)])

        return await self.change(rollout_id, decide)

    async def finish(self, rollout_id: str, command: RolloutCommand,
                     reason: str | None = None) -> RolloutRecord:
        """The workflow's end: SUCCEED, FINISH_ROLLBACK or FAIL, once."""
        counts = await self.counts(rollout_id)

        def decide(record: RolloutRecord) -> Change | None:
            if record.state in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK,
                                RolloutState.FAILED):
                return None
            after = next_state(record.state, command)
            return Change({"state": after, "reason": reason or record.reason,
                           "gate_token": None},
                          [RolloutCompleted(rollout=view_of(record, counts, after),
                                            reason=reason or record.reason)])

        return await self.change(rollout_id, decide)


_TARGET: Final = {
    RolloutCommand.APPROVE: RolloutState.RUNNING,
    RolloutCommand.RESUME: RolloutState.RUNNING,
    RolloutCommand.PAUSE: RolloutState.PAUSED,
    RolloutCommand.ABORT: RolloutState.ABORTED,
}


def _gate_wave(record: RolloutRecord) -> int:
    return int((record.aggregate.state if record.aggregate else {}).get("gate_wave", 0) or 0)


def _wave_size(record: RolloutRecord, wave: int) -> int:
    for planned in record.waves:
        if int(planned.get("wave", -1)) == wave:
            return int(planned.get("size", 0))
    return 0


def with_pending(counts: RolloutCounts, size: int) -> RolloutCounts:
    known = counts.in_progress + counts.executed + counts.rolled_back
    return RolloutCounts(pending=max(0, size - known), in_progress=counts.in_progress,
                         succeeded=counts.succeeded, failed=counts.failed,
                         timed_out=counts.timed_out, rolled_back=counts.rolled_back)
