"""Replaying a window of a bus's archive onto the bus (`fleetline replay`).

    plan = check_window(start, end, retention_days=30, now=time.time())   # pure
    name = await start_replay(aws, archive_arn=..., bus_arn=..., start=..., end=...,
                              filter_arns=[...])
    state = await wait_replay(aws, name, within=300)

On AWS this is StartReplay; on the emulator too (its fix `replay-window` makes moto honour
the window and `FilterArns`). An event type filter becomes `FilterArns`: the bus's rules
whose pattern can match that type (`shared.operations.rules_for_type`); a rule that also
matches other types replays those too, which the consumers' dedupe makes harmless. Replayed
events keep their envelope ids, so every consumer recognises what it applied before (inbox,
idempotency records, projection sequences, saga execution names): a replay applies nothing
twice, for as long as the dedupe records live (45 days, longer than any archive's 30: the
template test keeps it so). Windows older than the archive's retention are refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from shared.aws import AwsClients, aws_errors
from shared.errors import FleetlineError

__all__ = ["ReplayWindow", "ReplayWindowError", "check_window", "start_replay", "wait_replay"]

_DONE = ("COMPLETED", "CANCELLED", "FAILED")


class ReplayWindowError(FleetlineError):
    """A window that cannot be replayed (empty, in the future, older than the archive)."""


@dataclass(frozen=True, kw_only=True)
class ReplayWindow:
    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{self.start.isoformat()} .. {self.end.isoformat()}"


def check_window(start: datetime, end: datetime, *, retention_days: int,
                 now: float) -> ReplayWindow:
    """The window to replay, checked against the archive (pure).

    Raises:
        ReplayWindowError: `end` is not after `start`, `start` is in the future, or `start`
            is older than the archive keeps events (`retention_days`).
    """
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ReplayWindowError(f"--to ({end.isoformat()}) must be after --from "
                                f"({start.isoformat()})")
    if start.timestamp() > now:
        raise ReplayWindowError(f"--from ({start.isoformat()}) is in the future")
    oldest = now - retention_days * 86400
    if retention_days and start.timestamp() < oldest:
        raise ReplayWindowError(
            f"--from ({start.isoformat()}) is older than the archive keeps events "
            f"({retention_days} days, since {datetime.fromtimestamp(oldest, UTC).isoformat()})")
    return ReplayWindow(start=start, end=min(end, datetime.fromtimestamp(now, UTC)))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def start_replay(
    aws: AwsClients, *, archive_arn: str, bus_arn: str, window: ReplayWindow,
    filter_arns: Sequence[str] = (), name: str | None = None,
) -> str:
    """Start replaying `window` of the archive onto `bus_arn`; returns the replay's name.

    Raises:
        AwsRequestError: EventBridge refused (archive or bus missing, a replay of that name).
    """
    replay = name or f"fleetline-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    destination: dict[str, object] = {"Arn": bus_arn}
    if filter_arns:
        destination["FilterArns"] = list(filter_arns)
    events = await aws.client("events")
    with aws_errors():
        await events.start_replay(
            ReplayName=replay, EventSourceArn=archive_arn, Destination=destination,
            EventStartTime=window.start, EventEndTime=window.end)
    return replay


async def wait_replay(aws: AwsClients, name: str, *, within: float = 600.0) -> str:
    """The replay's final state (COMPLETED, CANCELLED, FAILED), polled every second.

    Raises:
        TimeoutError: still running after `within` seconds.
    """
    events = await aws.client("events")
    deadline = time.monotonic() + within
    while True:
        with aws_errors():
            state = str((await events.describe_replay(ReplayName=name))["State"])
        if state in _DONE:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"replay {name} still {state} after {within:.0f} s")
        await anyio.sleep(1.0)
