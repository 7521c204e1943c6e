"""Firmware rollouts: the decisions, without I/O.

A rollout moves the devices it targets (a zone, optionally a tenant and a current version)
to a new firmware version in waves: a canary wave, then waves growing by a factor (or
reaching cumulative percentages of the target). Every decision the workflow and the worker
take is a function here, tested without AWS:

- `RolloutSpec.validate()`: what an operator may ask (`RolloutRejected` names the field);
- `wave_sizes` / `WaveAssigner`: which wave each device streamed from the read model joins;
- `RolloutCounts`: device counts per status, and `abort_due` / `wave_reached_success`:
  the abort threshold (failure share once enough devices ran) and the success threshold a
  wave must reach before the next one starts;
- `next_state`: the rollout's lifecycle (`RolloutState`), refusing a transition it does not
  allow (`InvalidTransition`).

Counting rules (written down because operators read the numbers):
- a device is *executed* once it has an outcome: succeeded, failed or timed out;
- the failure share is (failed + timed out) / executed, as AWS IoT Jobs' abort criteria
  with failureType ALL: a device that never answers is as bad as one that says no;
- a wave reached its success threshold when succeeded / wave size >= the threshold.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from services.firmware.errors import InvalidTransition, RolloutRejected

__all__ = [
    "BATCH_SIZE_MAX",
    "DeviceStatus",
    "RolloutCommand",
    "RolloutCounts",
    "RolloutSpec",
    "RolloutState",
    "WaveAssigner",
    "abort_due",
    "compare_versions",
    "is_active",
    "next_state",
    "parse_version",
    "wave_reached_success",
    "wave_sizes",
]

BATCH_SIZE_MAX: Final = 1_000  # devices per child execution (ItemBatcher MaxItemsPerBatch)
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){0,3}([-+][0-9A-Za-z.-]+)?$")


class RolloutState(enum.StrEnum):
    RUNNING = "RUNNING"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    ABORTED = "ABORTED"  # stopped; its updated devices are being rolled back
    ROLLED_BACK = "ROLLED_BACK"  # stopped, and the rollback finished
    FAILED = "FAILED"  # stopped without rollback: a wave short of its success threshold,
    #                    or the workflow failed


_TERMINAL: Final = frozenset({RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK,
                              RolloutState.FAILED})


def is_active(state: RolloutState) -> bool:
    """Active rollouts hold their devices: another rollout may not target them."""
    return state not in _TERMINAL


class RolloutCommand(enum.StrEnum):
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    AWAIT_APPROVAL = "await_approval"  # the workflow reached a gate that needs an operator
    SUCCEED = "succeed"
    FINISH_ROLLBACK = "finish_rollback"
    FAIL = "fail"


_ALLOWED: Final[Mapping[tuple[RolloutState, RolloutCommand], RolloutState]] = {
    (RolloutState.RUNNING, RolloutCommand.AWAIT_APPROVAL): RolloutState.WAITING_APPROVAL,
    (RolloutState.WAITING_APPROVAL, RolloutCommand.APPROVE): RolloutState.RUNNING,
    (RolloutState.RUNNING, RolloutCommand.PAUSE): RolloutState.PAUSED,
    (RolloutState.PAUSED, RolloutCommand.RESUME): RolloutState.RUNNING,
    (RolloutState.RUNNING, RolloutCommand.ABORT): RolloutState.ABORTED,
    (RolloutState.WAITING_APPROVAL, RolloutCommand.ABORT): RolloutState.ABORTED,
    (RolloutState.PAUSED, RolloutCommand.ABORT): RolloutState.ABORTED,
    (RolloutState.RUNNING, RolloutCommand.SUCCEED): RolloutState.SUCCEEDED,
    (RolloutState.ABORTED, RolloutCommand.FINISH_ROLLBACK): RolloutState.ROLLED_BACK,
    (RolloutState.RUNNING, RolloutCommand.FAIL): RolloutState.FAILED,
    (RolloutState.WAITING_APPROVAL, RolloutCommand.FAIL): RolloutState.FAILED,
    (RolloutState.PAUSED, RolloutCommand.FAIL): RolloutState.FAILED,
    (RolloutState.ABORTED, RolloutCommand.FAIL): RolloutState.FAILED,
}


def next_state(state: RolloutState, command: RolloutCommand) -> RolloutState:
    """The state after `command`. Raises InvalidTransition with a sentence an operator reads
    ("rollout is RUNNING: approve needs WAITING_APPROVAL")."""
    after = _ALLOWED.get((state, command))
    if after is None:
        wanted = sorted({s.value for (s, c) in _ALLOWED if c is command})
        raise InvalidTransition(
            f"rollout is {state.value}: {command.value} needs {' or '.join(wanted) or 'nothing'}")
    return after


class DeviceStatus(enum.StrEnum):
    PENDING = "pending"  # planned, not commanded yet
    IN_PROGRESS = "in_progress"  # commanded, no outcome yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"  # updated, then put back on its previous version


@dataclass(frozen=True, slots=True)
class RolloutCounts:
    """Devices per status. `pending` is what a wave planned and nobody commanded yet."""

    pending: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    rolled_back: int = 0

    @property
    def executed(self) -> int:
        return self.succeeded + self.failed + self.timed_out

    @property
    def failure_share(self) -> float:
        """(failed + timed out) / executed, in percent (0 when nothing ran)."""
        executed = self.executed
        return 100.0 * (self.failed + self.timed_out) / executed if executed else 0.0

    def __add__(self, other: RolloutCounts) -> RolloutCounts:
        return RolloutCounts(**{name: getattr(self, name) + getattr(other, name)
                                for name in _COUNT_FIELDS})

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNT_FIELDS}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RolloutCounts:
        return cls(**{name: int(values.get(name, 0) or 0) for name in _COUNT_FIELDS})


_COUNT_FIELDS: Final = tuple(s.value for s in DeviceStatus)


def abort_due(counts: RolloutCounts, *, abort_threshold: float, min_executed: int) -> bool:
    """True when at least `min_executed` devices have an outcome and more than
    `abort_threshold` percent of them failed or timed out."""
    return counts.executed >= min_executed and counts.failure_share > abort_threshold


def wave_reached_success(counts: RolloutCounts, *, size: int, success_threshold: float) -> bool:
    """True when the wave's succeeded devices are at least `success_threshold` percent of its
    `size` (an empty wave has nothing to prove)."""
    return size == 0 or 100.0 * counts.succeeded / size >= success_threshold


@functools.lru_cache(maxsize=1024)  # a fleet runs a handful of versions; planning asks per device
def parse_version(text: str) -> tuple[tuple[int, ...], str]:
    """`1.2.3` -> ((1, 2, 3), ""), `2.0.0-rc1` -> ((2, 0, 0), "-rc1"). Raises ValueError."""
    if not _VERSION.match(text):
        raise ValueError(f"{text!r} is not a version like 1.2.3")
    match = re.match(r"^([0-9.]+)(.*)$", text)
    assert match is not None
    numbers, suffix = match.group(1), match.group(2)
    parts = tuple(int(p) for p in numbers.split("."))
    return parts + (0,) * (4 - len(parts)), suffix


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, equal to or newer than `b`; a pre-release (`-rc1`)
    is older than its release, build metadata (`+b7`) is ignored."""
    (na, sa), (nb, sb) = parse_version(a), parse_version(b)
    if na != nb:
        return -1 if na < nb else 1
    pa, pb = sa.split("+")[0], sb.split("+")[0]
    if pa == pb:
        return 0
    if not pa or not pb:  # a release is newer than any of its pre-releases
        return 1 if not pa else -1
    return -1 if pa < pb else 1


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """What an operator asked for. Percentages are 0-100; `waves` (cumulative percentages of
    the target, ending at 100) replaces `canary` / `growth` when given."""

    version: str
    zone: str
    tenant: str | None = None
    from_version: str | None = None
    canary: int = 10
    growth: float = 4.0
    waves: tuple[float, ...] = ()
    success_threshold: float = 95.0
    abort_threshold: float = 10.0
    min_executed: int = 10
    device_timeout: float = 600.0
    approval: bool = False
    allow_downgrade: bool = False
    client_token: str | None = None
    batch_size: int = BATCH_SIZE_MAX
    max_concurrency: int = 10  # child executions (batches) of a wave at once

    def validate(self, *, deployment_zone: str, known_versions: Sequence[str]) -> RolloutSpec:
        """Self, when it may start in a deployment serving `deployment_zone` with the
        uploaded `known_versions`. Raises RolloutRejected naming the field."""
        try:
            parse_version(self.version)
        except ValueError as exc:
            raise RolloutRejected(str(exc), field="version") from None
        if self.version not in known_versions:
            raise RolloutRejected(
                f"{self.version} is not an uploaded version (upload it first: "
                f"`fleetline firmware upload {self.version} FILE`)", field="version")
        if self.zone != deployment_zone:
            raise RolloutRejected(
                f"this deployment serves zone {deployment_zone!r}, not {self.zone!r}: its "
                "devices' data stays in their zone", field="zone")
        if self.from_version is not None:
            try:
                order = compare_versions(self.version, self.from_version)
            except ValueError as exc:
                raise RolloutRejected(str(exc), field="from_version") from None
            if order == 0:
                raise RolloutRejected("is the version being rolled out", field="from_version")
            if order < 0 and not self.allow_downgrade:
                raise RolloutRejected(
                    f"{self.version} is older than {self.from_version}: a downgrade needs "
                    "--allow-downgrade", field="version")
        if self.canary < 1:
            raise RolloutRejected("must be at least 1", field="canary")
        if not self.waves and not self.growth > 1.0:
            raise RolloutRejected("must be greater than 1", field="growth")
        if self.waves and (any(not 0 < w <= 100 for w in self.waves)
                           or list(self.waves) != sorted(set(self.waves))
                           or self.waves[-1] != 100):
            raise RolloutRejected(
                "must be increasing percentages between 0 and 100, ending at 100",
                field="waves")
        for name, low_open in (("success_threshold", True), ("abort_threshold", False)):
            value = getattr(self, name)
            if not (0 < value <= 100 if low_open else 0 <= value < 100):
                bounds = "0 < value <= 100" if low_open else "0 <= value < 100"
                raise RolloutRejected(f"must be a percentage, {bounds}; got {value}",
                                      field=name)
        if self.min_executed < 1:
            raise RolloutRejected("must be at least 1", field="min_executed")
        if not 1 <= self.device_timeout <= 7 * 86_400:
            raise RolloutRejected("must be between 1 s and 7 days", field="device_timeout")
        if not 1 <= self.batch_size <= BATCH_SIZE_MAX:
            raise RolloutRejected(f"must be between 1 and {BATCH_SIZE_MAX}", field="batch_size")
        if not 1 <= self.max_concurrency <= 1_000:
            raise RolloutRejected("must be between 1 and 1000", field="max_concurrency")
        return self

    def overlaps(self, other: RolloutSpec) -> bool:
        """True when a device may be targeted by both rollouts: same zone, tenants that
        intersect (no tenant means all), and current versions that may meet (no from-version
        means any; a device one rollout moves to its version may match the other's
        from-version)."""
        if self.zone != other.zone:
            return False
        if self.tenant is not None and other.tenant is not None and self.tenant != other.tenant:
            return False
        if self.from_version is None or other.from_version is None:
            return True
        return bool({self.from_version, self.version} & {other.from_version, other.version})

    def targets(self, *, tenant: str, zone: str, firmware: str | None) -> bool:
        """Whether a device (its tenant, zone and current firmware) is one to update: in
        scope, not on the version already, and not a downgrade unless allowed."""
        if zone != self.zone or (self.tenant is not None and tenant != self.tenant):
            return False
        if self.from_version is not None:
            return firmware == self.from_version
        if firmware == self.version:
            return False
        if firmware is None or self.allow_downgrade:
            return True
        try:
            return compare_versions(self.version, firmware) > 0
        except ValueError:
            return True  # an unparsable version on a device: update it

    def as_dict(self) -> dict[str, Any]:
        return {name: (list(value) if isinstance(value, tuple) else value)
                for name, value in self.__dict__.items()}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RolloutSpec:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "waves" in known:
            known["waves"] = tuple(float(w) for w in known["waves"] or ())
        for name in ("canary", "min_executed", "batch_size", "max_concurrency"):
            if name in known:
                known[name] = int(known[name])
        for name in ("growth", "success_threshold", "abort_threshold", "device_timeout"):
            if name in known:
                known[name] = float(known[name])
        return cls(**known)

    def with_token(self, client_token: str | None) -> RolloutSpec:
        return replace(self, client_token=client_token)


def wave_sizes(spec: RolloutSpec, total: int | None = None) -> Iterator[int]:
    """The sizes of the waves, in order, for `total` targeted devices: the canary, then each
    wave `growth` times the one before (the last one takes what is left); or, with
    `spec.waves`, the devices up to each cumulative percentage (at least one device per
    wave while devices remain). With growth and `total=None` the sizes never end: the
    planner stops when the devices do."""
    if spec.waves:
        if total is None:
            raise ValueError("waves given as percentages need the total")
        planned = 0
        for percent in spec.waves:
            upto = total if percent >= 100 else max(planned + 1, math.ceil(total * percent / 100))
            size = min(upto, total) - planned
            if size > 0:
                yield size
                planned += size
        return
    size, planned = spec.canary, 0
    while total is None or planned < total:
        take = size if total is None else min(size, total - planned)
        yield take
        planned += take
        size = max(size + 1, math.ceil(size * spec.growth))


@dataclass
class WaveAssigner:
    """Assigns devices, in the order they stream in, to waves: the first `sizes[0]` to wave
    0, and so on. Holds only the current wave's position: memory does not grow with the
    fleet."""

    sizes: Iterator[int]
    wave: int = -1
    _left: int = 0
    sizes_taken: list[int] = field(default_factory=list)

    def assign(self) -> tuple[int, bool]:
        """The wave of the next device, and whether it opens a new wave. Raises
        StopIteration when the planned waves are full (a `total` that was too small)."""
        opened = False
        if self._left == 0:
            self._left = next(self.sizes)
            self.sizes_taken.append(self._left)
            self.wave += 1
            opened = True
        self._left -= 1
        return self.wave, opened

    def planned_sizes(self) -> list[int]:
        """The sizes of the waves opened so far, the last one trimmed to what it got."""
        sizes = list(self.sizes_taken)
        if sizes:
            sizes[-1] -= self._left
        return sizes
