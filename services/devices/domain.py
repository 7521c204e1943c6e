"""The device aggregate: every decision of the devices context, without I/O.

The telemetry worker keeps one `DeviceState` per device in memory and calls these functions
for each record; they mutate the state in place (a worker holds 100,000+ of them, and a copy
per record would cost more than the rest of the work) and return what happened: an
`Applied` with the outcome and the events of the transitions, if any. Time is always passed
in, never read here, so every rule is a unit test away.

Rules (the issue is silent on some; these are the decisions):

- Order: records of one device carry a sequence number `seq` (>= 1, strictly increasing per
  device across reboots; devices keep a boot counter in the high bits). A record with
  `seq` equal to the last applied one is a DUPLICATE, lower is STALE; both are dropped and
  counted, and change nothing. Each record carries the device's full current readings (a
  snapshot, not a diff), so the state after any mix of duplicates and out-of-order records
  equals the state after the in-order stream: it is the state of the highest `seq`.
- Alarms have no hysteresis for the same reason: whether an alarm is open is a function of
  the last applied reading alone. A rule breaches when `value > max` or `value < min`.
- Connectivity: the first applied record makes a device ONLINE (DeviceConnected); silence
  longer than `silence_after` seconds, measured from the *arrival* time of its last record
  (the stream's clock, not the device's), makes it OFFLINE (DeviceDisconnected), once.
- Shadow: `desired` comes from the cloud side (DesiredUpdate with its own version),
  `reported` from the device (its `reported` object plus `firmware`); `delta` is every
  desired key whose reported value differs. ShadowDeltaChanged when the delta changes.
- Residency: each deployment serves one zone; a record for another zone, or a record whose
  zone or tenant differs from what the device is known to belong to, is refused with a
  reason and never applied.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from services.devices.events import (
    EDGE_SOURCE,
    DeviceConnected,
    DeviceDisconnected,
    DeviceEvent,
    DeviceStateChanged,
    DeviceView,
    FirmwareUpdateFailed,
    FirmwareVersionReported,
    Severity,
    ShadowDeltaChanged,
    Status,
    ThresholdBreached,
    ThresholdCleared,
)
from shared.errors import InvalidMessageError, PermanentError

__all__ = [
    "ZONES",
    "Applied",
    "ApplyOutcome",
    "DesiredUpdate",
    "DeviceState",
    "InvalidTelemetry",
    "Presence",
    "Record",
    "ResidencyRefused",
    "StateReport",
    "Telemetry",
    "ThresholdRule",
    "Thresholds",
    "apply_desired",
    "apply_presence",
    "apply_report",
    "apply_telemetry",
    "check_residency",
    "check_silence",
    "parse_record",
]

ZONES: Final = frozenset({"eu", "us"})
MAX_READINGS: Final = 64
MAX_ID_LENGTH: Final = 128
MAX_REPORTED_BYTES: Final = 8_192


class InvalidTelemetry(InvalidMessageError):
    """A record that can never be applied (malformed JSON, missing or wrong field).

    Goes to the failure queue with its reason; the shard moves on."""


class ResidencyRefused(PermanentError):
    """A record for a device of another zone (or claiming another tenant/zone than the device
    belongs to): refused with this reason, never written."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApplyOutcome(enum.StrEnum):
    """What applying one record or update did to the device (a message's outcome is
    `shared.consumers.Outcome`; the telemetry worker maps one to the other)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # same seq as the last applied record
    STALE = "stale"  # older than the last applied record (out of order)


# --------------------------------------------------------------------------- input records


# Not frozen: one is made per record (5,000-20,000 a second) and a frozen dataclass's
# __init__ costs 2-3 times as much (every field through object.__setattr__). Nothing
# changes a record once parsed; treat it as a value.
@dataclass(slots=True, kw_only=True)
class Telemetry:
    """One normalised telemetry record, as the edge writes it to the stream."""

    device_id: str
    tenant_id: str
    zone: str
    seq: int
    ts: float
    readings: Mapping[str, float]
    firmware: str | None = None
    reported: Mapping[str, Any] | None = None
    # A firmware job's outcome the device reports: {"status": "succeeded" | "failed",
    # "version", "reason", "job"} (job: the command it answers).
    update_report: Mapping[str, str] | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "kind": "telemetry",
            "device_id": self.device_id,
            "tenant_id": self.tenant_id,
            "zone": self.zone,
            "seq": self.seq,
            "ts": self.ts,
            "readings": dict(self.readings),
        }
        if self.firmware is not None:
            body["firmware"] = self.firmware
        if self.reported is not None:
            body["reported"] = dict(self.reported)
        if self.update_report is not None:
            body["firmware_update"] = dict(self.update_report)
        return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredUpdate:
    """The cloud side sets desired shadow state (for instance a firmware rollout).

    `version` orders updates of one device like `seq` orders telemetry; a key set to None is
    removed from desired."""

    device_id: str
    tenant_id: str
    zone: str
    version: int
    desired: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "desired",
                "device_id": self.device_id,
                "tenant_id": self.tenant_id,
                "zone": self.zone,
                "version": self.version,
                "desired": dict(self.desired),
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Presence:
    """The edge says a device connected or disconnected (`DevicePresence`, source
    `fleetline.iot`, routed from the device-events bus to the stream). `ts` orders it against
    the device's readings: a presence older than the last reading changes nothing."""

    device_id: str
    tenant_id: str
    zone: str
    online: bool
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StateReport:
    """A device reported its state on its `state` channel (`DeviceStateReported` from the IoT
    ingest function, source `fleetline.iot`). The ingest refused foreign zones already, so an
    empty `zone` means the deployment's (the telemetry worker fills it in)."""

    device_id: str
    tenant_id: str
    zone: str
    reported: Mapping[str, Any]
    ts: float


Record = Telemetry | DesiredUpdate | Presence | StateReport


def _edge_record(body: Mapping[str, Any]) -> Presence | StateReport:
    """An edge fact from the EventBridge event the bus's edge rules put on the stream."""
    kind = body.get("detail-type")
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise InvalidTelemetry("must be an object", field="detail")
    if kind == "DevicePresence":
        status = detail.get("status")
        if status not in ("online", "offline"):
            raise InvalidTelemetry("must be 'online' or 'offline'", field="detail.status")
        zone = _str_field(detail, "zone")
        if zone not in ZONES:
            raise InvalidTelemetry(f"must be one of {sorted(ZONES)}", field="detail.zone")
        return Presence(device_id=_str_field(detail, "device_id"),
                        tenant_id=_str_field(detail, "tenant_id"), zone=zone,
                        online=status == "online", ts=_edge_ts(detail))
    if kind == "DeviceStateReported":
        data = detail.get("data")
        if not isinstance(data, dict):
            raise InvalidTelemetry("must be an object", field="detail.data")
        reported = _object_field(data, "reported")
        if reported is None:
            raise InvalidTelemetry("must be an object", field="detail.data.reported")
        zone = data.get("zone") or ""
        return StateReport(device_id=_str_field(data, "device_id"),
                           tenant_id=_str_field(data, "tenant_id"), zone=str(zone),
                           reported=reported, ts=_edge_ts(data))
    raise InvalidTelemetry(f"unknown edge event {kind!r}", field="detail-type")


def _edge_ts(body: Mapping[str, Any]) -> float:
    ts = body.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        raise InvalidTelemetry("must be a number (epoch seconds)", field="ts")
    return float(ts)


# The field checks run for every record (5,000-20,000 a second): the common, valid case is
# one test; the reason is worked out only for a bad value.


def _str_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if not isinstance(value, str) or not value:
        raise InvalidTelemetry("must be a non-empty string", field=name)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidTelemetry(f"longer than {MAX_ID_LENGTH} characters", field=name)
    return value


def _int_field(body: Mapping[str, Any], name: str, *, minimum: int) -> int:
    value = body.get(name)
    if type(value) is int and value >= minimum:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTelemetry("must be an integer", field=name)
    if value < minimum:
        raise InvalidTelemetry(f"must be >= {minimum}", field=name)
    return value


def _object_field(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTelemetry("must be an object", field=name)
    if len(orjson.dumps(value)) > MAX_REPORTED_BYTES:
        raise InvalidTelemetry(f"larger than {MAX_REPORTED_BYTES} bytes", field=name)
    return value


def _readings(body: Mapping[str, Any]) -> dict[str, float]:
    value = body.get("readings")
    if not isinstance(value, dict):
        raise InvalidTelemetry("must be an object of metric -> number", field="readings")
    if len(value) > MAX_READINGS:
        raise InvalidTelemetry(f"more than {MAX_READINGS} metrics", field="readings")
    out: dict[str, float] = {}
    isfinite = math.isfinite
    for metric, reading in value.items():
        kind = type(reading)
        if (kind is not float and kind is not int) or not isfinite(reading):
            raise InvalidTelemetry("must be a finite number", field=f"readings.{metric}")
        out[metric] = float(reading)
    return out


def _update_report(body: Mapping[str, Any]) -> dict[str, str] | None:
    """`firmware_update: {"status": "succeeded" | "failed", "version", "reason", "job"}`: a
    device's answer to a firmware job, or None when absent."""
    value = body.get("firmware_update")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTelemetry("must be an object", field="firmware_update")
    if value.get("status") not in ("succeeded", "failed"):
        raise InvalidTelemetry("must be 'succeeded' or 'failed'",
                               field="firmware_update.status")
    out: dict[str, str] = {"status": str(value["status"])}
    for key in ("version", "reason", "job"):
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise InvalidTelemetry("must be a string", field=f"firmware_update.{key}")
        if item:
            out[key] = item[:300]
    if "version" not in out:
        raise InvalidTelemetry("must name the version that failed",
                               field="firmware_update.version")
    return out


def parse_record(data: bytes | str) -> Record:
    """Decode one stream record: telemetry, a desired update, or an edge fact (an
    EventBridge event from `fleetline.iot`: DevicePresence, DeviceStateReported).

    Raises:
        InvalidTelemetry: the record is not JSON, not an object, has an unknown `kind`, or a
            field is missing or of the wrong type; the message names the field.
    """
    try:
        body = orjson.loads(data)  # the hot path: 5,000-20,000 records a second
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTelemetry(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidTelemetry("record must be a JSON object")
    if "detail-type" in body:  # an edge fact the bus's edge rules put on the stream
        if body.get("source") != EDGE_SOURCE:
            raise InvalidTelemetry(f"events on the stream come from {EDGE_SOURCE}",
                                   field="source")
        return _edge_record(body)
    kind = body.get("kind", "telemetry")
    device_id = _str_field(body, "device_id")
    if device_id[0] == "~":  # the store's own items (packed last-seen) start with it
        raise InvalidTelemetry("must not start with '~' (reserved)", field="device_id")
    tenant_id = _str_field(body, "tenant_id")
    zone = _str_field(body, "zone")
    if zone not in ZONES:
        raise InvalidTelemetry(f"must be one of {sorted(ZONES)}", field="zone")
    if kind == "telemetry":
        ts = body.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            raise InvalidTelemetry("must be a number (epoch seconds)", field="ts")
        firmware = body.get("firmware")
        if firmware is not None and (not isinstance(firmware, str) or not firmware):
            raise InvalidTelemetry("must be a non-empty string", field="firmware")
        return Telemetry(
            device_id=device_id,
            tenant_id=tenant_id,
            zone=zone,
            seq=_int_field(body, "seq", minimum=1),
            ts=float(ts),
            readings=_readings(body),
            firmware=firmware,
            reported=_object_field(body, "reported"),
            update_report=_update_report(body),
        )
    if kind == "desired":
        desired = _object_field(body, "desired")
        if desired is None:
            raise InvalidTelemetry("must be an object", field="desired")
        return DesiredUpdate(
            device_id=device_id,
            tenant_id=tenant_id,
            zone=zone,
            version=_int_field(body, "version", minimum=1),
            desired=desired,
        )
    raise InvalidTelemetry(f"unknown kind {kind!r}", field="kind")


def check_residency(
    record: Record, *, deployment_zone: str, state: DeviceState | None
) -> None:
    """Refuse a record this deployment must not store.

    Raises:
        ResidencyRefused: the record's zone is not this deployment's, or it claims a zone or
            tenant other than the one the device is known to belong to.
    """
    if record.zone != deployment_zone:
        raise ResidencyRefused(
            f"residency: device {record.device_id} belongs to zone {record.zone!r}; "
            f"this deployment serves {deployment_zone!r}"
        )
    if state is not None:
        if state.zone != record.zone:
            raise ResidencyRefused(
                f"residency: device {record.device_id} is registered in zone {state.zone!r}, "
                f"record claims {record.zone!r}"
            )
        if state.tenant_id != record.tenant_id:
            raise ResidencyRefused(
                f"tenancy: device {record.device_id} belongs to another tenant than "
                f"{record.tenant_id!r}"
            )


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    """`metric` breaches when above `max` or below `min` (either may be None)."""

    metric: str
    max: float | None = None
    min: float | None = None
    severity: Severity = Severity.WARNING

    def __post_init__(self) -> None:
        if self.max is None and self.min is None:
            raise ValueError(f"rule for {self.metric!r}: give max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"rule for {self.metric!r}: min must be <= max")

    def breach(self, value: float) -> tuple[float, str] | None:
        """(limit, "max"/"min") when `value` breaches this rule, else None."""
        if self.max is not None and value > self.max:
            return self.max, "max"
        if self.min is not None and value < self.min:
            return self.min, "min"
        return None


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Rules per tenant; tenants without their own rules get `default`."""

    default: tuple[ThresholdRule, ...] = ()
    by_tenant: Mapping[str, tuple[ThresholdRule, ...]] = field(default_factory=dict)

    def for_tenant(self, tenant_id: str) -> tuple[ThresholdRule, ...]:
        return self.by_tenant.get(tenant_id, self.default)

    @classmethod
    def from_json(cls, text: str) -> Thresholds:
        """`{"default": [{"metric": "temperature", "max": 80, "severity": "critical"}],
        "tenants": {"t-001": [...]}}`.

        Raises:
            ValueError: the text is not that shape; the message names the offending part.
        """
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("thresholds: must be a JSON object")

        def rules(items: Any, where: str) -> tuple[ThresholdRule, ...]:
            if not isinstance(items, list):
                raise ValueError(f"thresholds.{where}: must be a list of rules")
            out = []
            for i, item in enumerate(items):
                try:
                    out.append(
                        ThresholdRule(
                            metric=str(item["metric"]),
                            max=None if item.get("max") is None else float(item["max"]),
                            min=None if item.get("min") is None else float(item["min"]),
                            severity=Severity(item.get("severity", "warning")),
                        )
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"thresholds.{where}[{i}]: {exc}") from None
            return tuple(out)

        tenants = body.get("tenants", {})
        if not isinstance(tenants, dict):
            raise ValueError("thresholds.tenants: must be an object")
        return cls(
            default=rules(body.get("default", []), "default"),
            by_tenant={t: rules(r, f"tenants.{t}") for t, r in tenants.items()},
        )


DEFAULT_THRESHOLDS: Final = Thresholds(
    default=(
        ThresholdRule(metric="temperature", max=80.0, severity=Severity.CRITICAL),
        ThresholdRule(metric="battery", min=10.0, severity=Severity.WARNING),
    )
)


# --------------------------------------------------------------------------- the aggregate


@dataclass(slots=True, kw_only=True)
class DeviceState:
    """Everything the telemetry worker knows about one device.

    `version` is the store's optimistic-concurrency counter (the worker bumps it on every
    write); `event_seq` numbers the device's events (the envelope `sequence`); `received`
    counts applied records (duplicates and stale records are not counted)."""

    device_id: str
    tenant_id: str
    zone: str
    seq: int = 0
    received: int = 0
    last_seen: float = 0.0
    last_arrival: float = 0.0
    status: Status = Status.UNKNOWN
    firmware: str | None = None
    readings: dict[str, float] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 0
    delta: dict[str, Any] = field(default_factory=dict)
    alarms: dict[str, Severity] = field(default_factory=dict)
    # The last firmware job answered (its job id, else status and version): reported once.
    update_report: str | None = None
    event_seq: int = 0
    version: int = 0

    @classmethod
    def new(cls, record: Record) -> DeviceState:
        return cls(device_id=record.device_id, tenant_id=record.tenant_id, zone=record.zone)

    def view(self) -> DeviceView:
        return DeviceView(
            device_id=self.device_id,
            tenant_id=self.tenant_id,
            zone=self.zone,
            status=self.status,
            seq=self.seq,
            last_seen=self.last_seen,
            firmware=self.firmware,
            readings=dict(self.readings),
            reported=dict(self.reported),
            desired=dict(self.desired),
            delta=dict(self.delta),
            alarms=dict(self.alarms),
        )

    def snapshot(self) -> dict[str, Any]:
        """The state as comparable data, without counters and store bookkeeping: two runs
        over the same records in any order with any duplicates give equal snapshots."""
        return {
            "device_id": self.device_id,
            "tenant_id": self.tenant_id,
            "zone": self.zone,
            "seq": self.seq,
            "last_seen": self.last_seen,
            "status": str(self.status),
            "firmware": self.firmware,
            "readings": dict(self.readings),
            "reported": dict(self.reported),
            "desired": dict(self.desired),
            "desired_version": self.desired_version,
            "delta": dict(self.delta),
            "alarms": {k: str(v) for k, v in self.alarms.items()},
            "update_report": self.update_report,
        }

    def to_doc(self) -> dict[str, Any]:
        """Everything, JSON-able, for the store."""
        doc = self.snapshot()
        doc.update(
            received=self.received,
            last_arrival=self.last_arrival,
            event_seq=self.event_seq,
            version=self.version,
        )
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> DeviceState:
        return cls(
            device_id=str(doc["device_id"]),
            tenant_id=str(doc["tenant_id"]),
            zone=str(doc["zone"]),
            seq=int(doc.get("seq", 0)),
            received=int(doc.get("received", 0)),
            last_seen=float(doc.get("last_seen", 0.0)),
            last_arrival=float(doc.get("last_arrival", 0.0)),
            status=Status(doc.get("status", Status.UNKNOWN)),
            firmware=doc.get("firmware"),
            readings={k: float(v) for k, v in dict(doc.get("readings", {})).items()},
            reported=dict(doc.get("reported", {})),
            desired=dict(doc.get("desired", {})),
            desired_version=int(doc.get("desired_version", 0)),
            delta=dict(doc.get("delta", {})),
            alarms={k: Severity(v) for k, v in dict(doc.get("alarms", {})).items()},
            update_report=doc.get("update_report"),
            event_seq=int(doc.get("event_seq", 0)),
            version=int(doc.get("version", 0)),
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """What one input did: its outcome and the events of the transitions it caused."""

    outcome: ApplyOutcome
    events: Sequence[DeviceEvent] = ()


_DUPLICATE: Final = Applied(ApplyOutcome.DUPLICATE)
_STALE: Final = Applied(ApplyOutcome.STALE)
_NOTHING: Final = Applied(ApplyOutcome.APPLIED)
_MISSING: Final = object()


def _delta(
    desired: Mapping[str, Any], reported: Mapping[str, Any], firmware: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = firmware if key == "firmware" else reported.get(key)
        if have != want:
            out[key] = want
    return out


def apply_telemetry(
    state: DeviceState, record: Telemetry, *, thresholds: Thresholds, arrival: float
) -> Applied:
    """Apply one telemetry record to its device, in per-device sequence order.

    `arrival` is when the record reached the stream (epoch seconds): silence is measured
    from it. Duplicates and stale records change nothing. Events come in this order:
    DeviceConnected, FirmwareVersionReported, DeviceStateChanged, ShadowDeltaChanged,
    ThresholdBreached / ThresholdCleared; each carries the device as it is after the record.
    """
    if record.seq == state.seq:
        return _DUPLICATE
    if record.seq < state.seq:
        return _STALE
    state.seq = record.seq
    state.received += 1
    state.last_seen = record.ts
    if arrival > state.last_arrival:
        state.last_arrival = arrival
    state.readings = dict(record.readings)

    # Each decision below records a small tuple; events are built once the state is final,
    # because each carries the final snapshot. Most records decide nothing.
    pending: list[tuple[str, Any]] = []
    if state.status is not Status.ONLINE:
        state.status = Status.ONLINE
        pending.append(("connected", None))
    if record.firmware is not None and record.firmware != state.firmware:
        pending.append(("firmware", state.firmware))
        state.firmware = record.firmware
    report = record.update_report
    if report is not None:
        key = report.get("job") or f"{report['status']}:{report['version']}"
        if key != state.update_report:
            state.update_report = key
            if report["status"] == "failed":
                pending.append(("update_failed", report))
            elif not any(kind == "firmware" for kind, _ in pending):
                # The job succeeded without a change of version (a device asked to go back
                # to the version it runs): still an answer, reported as the version it runs.
                pending.append(("firmware", state.firmware))
    if record.reported is not None and record.reported != state.reported:
        changed = {
            k: v for k, v in record.reported.items() if state.reported.get(k, _MISSING) != v
        }
        changed.update({k: None for k in state.reported if k not in record.reported})
        state.reported = dict(record.reported)
        pending.append(("state", changed))
    if state.desired:
        delta = _delta(state.desired, state.reported, state.firmware)
        if delta != state.delta:
            state.delta = delta
            pending.append(("delta", None))
    for rule in thresholds.for_tenant(state.tenant_id):
        value = record.readings.get(rule.metric)
        if value is None:
            continue
        breach = rule.breach(value)
        is_open = rule.metric in state.alarms
        if breach is not None and not is_open:
            state.alarms[rule.metric] = rule.severity
            pending.append(("breached", (rule, value, breach)))
        elif breach is None and is_open:
            severity = state.alarms.pop(rule.metric)
            pending.append(("cleared", (rule, value, severity)))
    if not pending:
        return _NOTHING
    return Applied(ApplyOutcome.APPLIED, _build_events(state, pending, silent_for=0.0))



def _build_events(
    state: DeviceState, pending: Sequence[tuple[str, Any]], *, silent_for: float
) -> list[DeviceEvent]:
    view = state.view()
    events: list[DeviceEvent] = []
    for kind, arg in pending:
        event: DeviceEvent
        if kind == "connected":
            event = DeviceConnected(device=view)
        elif kind == "disconnected":
            event = DeviceDisconnected(device=view, silent_for=silent_for)
        elif kind == "firmware":
            event = FirmwareVersionReported(device=view, version=state.firmware, previous=arg)
        elif kind == "update_failed":
            event = FirmwareUpdateFailed(device=view, version=arg["version"],
                                         reason=arg.get("reason", "failed"), job=arg.get("job"))
        elif kind == "state":
            event = DeviceStateChanged(device=view, changed=arg)
        elif kind == "delta":
            event = ShadowDeltaChanged(device=view, delta=dict(state.delta))
        elif kind == "breached":
            rule, value, (limit, bound) = arg
            event = ThresholdBreached(
                device=view, metric=rule.metric, value=value, limit=limit, bound=bound,
                severity=rule.severity,
            )
        else:  # "cleared"
            rule, value, severity = arg
            event = ThresholdCleared(
                device=view, metric=rule.metric, value=value, severity=severity
            )
        events.append(event)
    state.event_seq += len(events)
    return events


def apply_desired(state: DeviceState, update: DesiredUpdate) -> Applied:
    """Merge a desired-state update (ordered by its `version`); None removes a key."""
    if update.version == state.desired_version:
        return _DUPLICATE
    if update.version < state.desired_version:
        return _STALE
    state.desired_version = update.version
    desired = dict(state.desired)
    for key, value in update.desired.items():
        if value is None:
            desired.pop(key, None)
        else:
            desired[key] = value
    state.desired = desired
    delta = _delta(desired, state.reported, state.firmware)
    if delta == state.delta:
        return _NOTHING
    state.delta = delta
    return Applied(ApplyOutcome.APPLIED, _build_events(state, [("delta", None)], silent_for=0.0))


def apply_presence(state: DeviceState, presence: Presence, *, arrival: float) -> Applied:
    """The edge's word on a connection. Older than the last reading: STALE (the reading says
    more). Online: the silence clock restarts, and an OFFLINE device connects
    (DeviceConnected). Offline: an ONLINE device disconnects (DeviceDisconnected); its next
    reading connects it again. Anything else: DUPLICATE."""
    if presence.ts < state.last_seen:
        return _STALE
    if presence.online:
        if arrival > state.last_arrival:
            state.last_arrival = arrival
        if state.status is Status.ONLINE:
            return _DUPLICATE
        state.status = Status.ONLINE
        return Applied(ApplyOutcome.APPLIED, _build_events(state, [("connected", None)],
                                                      silent_for=0.0))
    if state.status is not Status.ONLINE:
        return _DUPLICATE
    state.status = Status.OFFLINE
    return Applied(ApplyOutcome.APPLIED, _build_events(state, [("disconnected", None)],
                                                  silent_for=0.0))


def apply_report(state: DeviceState, report: StateReport) -> Applied:
    """A state report from the edge: `reported` replaces the device's reported state
    (DeviceStateChanged with what changed, ShadowDeltaChanged when the delta moves), unless
    a reading newer than it was applied (STALE) or it changes nothing (DUPLICATE)."""
    if report.ts < state.last_seen:
        return _STALE
    if report.reported == state.reported:
        return _DUPLICATE
    changed = {k: v for k, v in report.reported.items()
               if state.reported.get(k, _MISSING) != v}
    changed.update({k: None for k in state.reported if k not in report.reported})
    state.reported = dict(report.reported)
    pending: list[tuple[str, Any]] = [("state", changed)]
    if state.desired:
        delta = _delta(state.desired, state.reported, state.firmware)
        if delta != state.delta:
            state.delta = delta
            pending.append(("delta", None))
    return Applied(ApplyOutcome.APPLIED, _build_events(state, pending, silent_for=0.0))


def check_silence(state: DeviceState, *, now: float, silence_after: float) -> Applied | None:
    """DeviceDisconnected when an ONLINE device's last record arrived more than
    `silence_after` seconds before `now`; None otherwise (also for a device already OFFLINE,
    so a silence is reported once)."""
    if state.status is not Status.ONLINE:
        return None
    silent_for = now - state.last_arrival
    if silent_for <= silence_after:
        return None
    state.status = Status.OFFLINE
    return Applied(
        ApplyOutcome.APPLIED, _build_events(state, [("disconnected", None)], silent_for=silent_for)
    )
