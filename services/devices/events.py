"""The events of the devices bounded context: the `data` of their envelopes.

Every event is emitted only on a *transition* of one device (never per telemetry record) and
carries a snapshot of the device after the transition (`device`, event-carried state), so the
read-model projection and the dashboard never call back into the telemetry worker: the
projection keeps the snapshot with the highest envelope `sequence` (per device) and ignores
older or repeated ones.

Unknown fields are ignored (`extra="ignore"`); new optional fields get defaults, so version 1
and a later version 2 can coexist on the bus.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from shared.events import event_type

__all__ = [
    "EDGE_SOURCE",
    "EVENT_TYPES",
    "SOURCE",
    "DeviceAlarmRaised",
    "DeviceConnected",
    "DeviceDisconnected",
    "DeviceEvent",
    "DeviceStateChanged",
    "DeviceStateReported",
    "DeviceView",
    "FirmwareUpdateFailed",
    "FirmwareVersionReported",
    "Severity",
    "ShadowDeltaChanged",
    "Status",
    "ThresholdBreached",
    "ThresholdCleared",
]

SOURCE: Final = "fleetline.devices"
EDGE_SOURCE: Final = "fleetline.iot"  # facts from the edge Lambda (services.devices.ingest)


class Status(enum.StrEnum):
    """Connectivity of a device as the telemetry worker sees it."""

    UNKNOWN = "unknown"  # never heard from
    ONLINE = "online"
    OFFLINE = "offline"  # silent longer than the threshold


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DeviceView(_Model):
    """What consumers need to know about a device, as of the event that carries it."""

    device_id: str
    tenant_id: str
    zone: str
    status: Status
    seq: int = Field(ge=0, description="highest telemetry sequence applied")
    last_seen: float = Field(description="device timestamp of that record, epoch seconds")
    firmware: str | None = None
    readings: dict[str, float] = Field(default_factory=dict)
    reported: dict[str, Any] = Field(default_factory=dict)
    desired: dict[str, Any] = Field(default_factory=dict)
    delta: dict[str, Any] = Field(default_factory=dict)
    alarms: dict[str, Severity] = Field(
        default_factory=dict, description="open alarms: metric -> severity"
    )


class DeviceEvent(_Model):
    """Fields every device event carries."""

    type_name: ClassVar[str] = ""

    device: DeviceView


@event_type("DeviceConnected", source=SOURCE, version=1)
class DeviceConnected(DeviceEvent):
    """First record from a device, or the first after it was reported disconnected."""

    type_name: ClassVar[str] = "DeviceConnected"


@event_type("DeviceDisconnected", source=SOURCE, version=1)
class DeviceDisconnected(DeviceEvent):
    """A device went silent for longer than the threshold. Reported once per silence."""

    type_name: ClassVar[str] = "DeviceDisconnected"

    silent_for: float = Field(ge=0, description="seconds since the last record arrived")


@event_type("DeviceStateChanged", source=SOURCE, version=1)
class DeviceStateChanged(DeviceEvent):
    """The device's reported shadow state changed (readings alone never emit this)."""

    type_name: ClassVar[str] = "DeviceStateChanged"

    changed: dict[str, Any] = Field(description="reported keys whose value changed, new values")


@event_type("FirmwareVersionReported", source=SOURCE, version=1)
class FirmwareVersionReported(DeviceEvent):
    """The device reported a firmware version different from the one known before."""

    type_name: ClassVar[str] = "FirmwareVersionReported"

    version: str
    previous: str | None = None


@event_type("FirmwareUpdateFailed", source=SOURCE, version=1)
class FirmwareUpdateFailed(DeviceEvent):
    """The device reported that installing `version` failed (`reason` as it said it);
    it stays on the version it had. `job` names the command it answers, so a device
    repeating one failure is reported once."""

    type_name: ClassVar[str] = "FirmwareUpdateFailed"

    version: str
    reason: str
    job: str | None = None


@event_type("ShadowDeltaChanged", source=SOURCE, version=1)
class ShadowDeltaChanged(DeviceEvent):
    """The shadow's delta (desired keys the device has not reported yet) changed.

    An empty `delta` means the device has caught up with everything desired."""

    type_name: ClassVar[str] = "ShadowDeltaChanged"

    delta: dict[str, Any]


@event_type("ThresholdBreached", source=SOURCE, version=1)
class ThresholdBreached(DeviceEvent):
    """A reading crossed a tenant's threshold rule: an alarm opens (also sent to SNS)."""

    type_name: ClassVar[str] = "ThresholdBreached"

    metric: str
    value: float
    limit: float
    bound: str = Field(description='"max" or "min"')
    severity: Severity


@event_type("ThresholdCleared", source=SOURCE, version=1)
class ThresholdCleared(DeviceEvent):
    """A reading is back within its tenant's rule: the alarm closes."""

    type_name: ClassVar[str] = "ThresholdCleared"

    metric: str
    value: float
    severity: Severity


@event_type("DeviceAlarmRaised", source=EDGE_SOURCE, version=1)
class DeviceAlarmRaised(_Model):
    """A device raised an alarm itself (its `alarms` MQTT channel, through the edge Lambda)."""

    device_id: str
    tenant_id: str
    severity: str
    code: str
    message: str = ""
    ts: float


@event_type("DeviceStateReported", source=EDGE_SOURCE, version=1)
class DeviceStateReported(_Model):
    """A device reported (part of) its state on its `state` MQTT channel."""

    device_id: str
    tenant_id: str
    reported: dict[str, Any] = Field(default_factory=dict)
    ts: float


EVENT_TYPES: Final[tuple[type[DeviceEvent], ...]] = (
    DeviceConnected,
    DeviceDisconnected,
    DeviceStateChanged,
    FirmwareVersionReported,
    FirmwareUpdateFailed,
    ShadowDeltaChanged,
    ThresholdBreached,
    ThresholdCleared,
)
