"""The events of the firmware context, published on the `firmware` bus through the outbox.

Every rollout event carries the rollout's id, version, scope (zone, tenant) and its device
counts after the change (event-carried state: the dashboard and any other consumer never
read the firmware table). Sequence per rollout: the envelope's per-aggregate `sequence`.
`DeviceRollbackCompleted` is per device, on the device's item (its own aggregate).
"""

from __future__ import annotations

from typing import ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from shared.events import event_type

__all__ = [
    "EVENT_TYPES",
    "SOURCE",
    "DeviceRollbackCompleted",
    "RolloutAborted",
    "RolloutApprovalRequested",
    "RolloutCompleted",
    "RolloutEvent",
    "RolloutStarted",
    "RolloutView",
    "WaveCompleted",
    "WaveStarted",
]

SOURCE: Final = "fleetline.firmware"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RolloutView(_Model):
    """A rollout as its events show it."""

    rollout_id: str
    version: str
    zone: str
    tenant: str | None = None
    from_version: str | None = None
    state: str
    counts: dict[str, int] = Field(default_factory=dict)
    waves_planned: int = 0
    devices_planned: int = 0


class RolloutEvent(_Model):
    type_name: ClassVar[str] = ""

    rollout: RolloutView


@event_type("RolloutStarted", source=SOURCE, version=1)
class RolloutStarted(RolloutEvent):
    type_name: ClassVar[str] = "RolloutStarted"

    approval: bool = False
    canary: int = 0
    growth: float = 0.0
    success_threshold: float = 0.0
    abort_threshold: float = 0.0


@event_type("WaveStarted", source=SOURCE, version=1)
class WaveStarted(RolloutEvent):
    type_name: ClassVar[str] = "WaveStarted"

    wave: int
    size: int


@event_type("WaveCompleted", source=SOURCE, version=1)
class WaveCompleted(RolloutEvent):
    type_name: ClassVar[str] = "WaveCompleted"

    wave: int
    size: int
    wave_counts: dict[str, int] = Field(default_factory=dict)
    reached_success: bool


@event_type("RolloutApprovalRequested", source=SOURCE, version=1)
class RolloutApprovalRequested(RolloutEvent):
    """The rollout waits for an operator before `next_wave` (the issue's
    "RolloutAwaitingApproval", named in the past tense as every event here)."""

    type_name: ClassVar[str] = "RolloutApprovalRequested"

    next_wave: int


@event_type("RolloutAborted", source=SOURCE, version=1)
class RolloutAborted(RolloutEvent):
    type_name: ClassVar[str] = "RolloutAborted"

    reason: str
    by_operator: bool = False


@event_type("RolloutCompleted", source=SOURCE, version=1)
class RolloutCompleted(RolloutEvent):
    """The rollout ended: SUCCEEDED, ROLLED_BACK or FAILED (`rollout.state`)."""

    type_name: ClassVar[str] = "RolloutCompleted"

    reason: str | None = None


@event_type("DeviceRollbackCompleted", source=SOURCE, version=1)
class DeviceRollbackCompleted(_Model):
    """A device this rollout updated is back on its previous version (the issue's
    "DeviceRolledBack": the project's names end with their past-tense verb)."""

    type_name: ClassVar[str] = "DeviceRollbackCompleted"

    rollout_id: str
    device_id: str
    tenant: str
    version: str  # the version it is back on
    abandoned_version: str


EVENT_TYPES: Final = (RolloutStarted, WaveStarted, WaveCompleted, RolloutApprovalRequested,
                      RolloutAborted, RolloutCompleted, DeviceRollbackCompleted)
