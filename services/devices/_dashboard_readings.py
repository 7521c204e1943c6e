"""Readings on the dashboard: what each task keeps of the telemetry stream, and what each
viewer is sent of it. No I/O (the reader is `shared.consumers.kinesis.KinesisFanOut`, wired
in `services.devices.dashboard`).

- `ReadingsView`: per device the latest reading (its metrics as compact JSON text, its `ts`
  and arrival time) and a ring of the last `SPARK_POINTS` values of one metric (the view's
  `spark_metric`, default temperature, when the device reports it; else its first metric by
  name) for the sparkline; per tenant readings per second over the
  last `SERIES_SECONDS` (the fleet chart). Memory is per device, fixed: nothing grows with
  the rate or with time (docs/devices.md has the measured bytes per device).
- `Viewer`: one SSE connection. It watches the devices on its screen (at most
  `MAX_WATCHED`, set by the page through `/api/watch`); a reading of a watched device marks
  it dirty, and `due(now)` hands out each dirty device at most once per
  `MIN_INTERVAL` seconds (the latest reading wins: coalescing, not queueing). A viewer is
  never sent readings of devices it does not look at, nor of another tenant.

A record is taken when it parses as telemetry with a tenant and a device id and its `seq` is
newer than the device's; anything else (desired updates, malformed records: the telemetry
worker reports those) is skipped and counted.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shared.consumers import Message

__all__ = [
    "MAX_WATCHED",
    "MIN_INTERVAL",
    "SERIES_SECONDS",
    "SPARK_POINTS",
    "DeviceReadings",
    "ReadingsView",
    "Viewer",
    "fleet_frame",
    "readings_frame",
]

SPARK_POINTS: Final = 30
SERIES_SECONDS: Final = 120
MAX_WATCHED: Final = 200
MIN_INTERVAL: Final = 1.0  # seconds between two sends of one device to one viewer


class DeviceReadings:
    """One device's latest reading and its sparkline ring. `__slots__`: there may be a
    million of these."""

    __slots__ = ("arrival", "count", "metric", "readings", "ring", "seq", "tenant_id", "ts")

    def __init__(self, tenant_id: str, metric: str) -> None:
        self.tenant_id = tenant_id
        self.metric = metric
        self.seq = 0
        self.ts = 0.0
        self.arrival = 0.0
        self.readings = "{}"
        self.ring = array("f", bytes(4 * SPARK_POINTS))
        self.count = 0  # values written to the ring (the next slot is count % SPARK_POINTS)

    def spark(self) -> list[float]:
        """The ring's values, oldest first (rounded to 3 significant decimals' worth)."""
        n = min(self.count, SPARK_POINTS)
        start = self.count - n
        return [round(self.ring[(start + i) % SPARK_POINTS], 3) for i in range(n)]

    def to_json(self, device_id: str) -> dict[str, Any]:
        return {"device_id": device_id, "seq": self.seq, "ts": self.ts,
                "arrival": self.arrival, "readings": orjson.loads(self.readings),
                "spark_metric": self.metric, "spark": self.spark()}


@dataclass
class _Series:
    """Readings per second of one tenant over the last SERIES_SECONDS (a ring by second)."""

    counts: array[int] = field(default_factory=lambda: array("I", bytes(4 * SERIES_SECONDS)))
    seconds: array[int] = field(default_factory=lambda: array("q", bytes(8 * SERIES_SECONDS)))

    def add(self, second: int, n: int = 1) -> None:
        slot = second % SERIES_SECONDS
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += n

    def points(self, now: float) -> list[int]:
        """Readings per second for the SERIES_SECONDS whole seconds before `now`, oldest
        first."""
        current = int(now)
        out = []
        for second in range(current - SERIES_SECONDS, current):
            slot = second % SERIES_SECONDS
            out.append(int(self.counts[slot]) if self.seconds[slot] == second else 0)
        return out


class ReadingsView:
    """Every device's latest reading and sparkline, per tenant readings per second."""

    def __init__(self, *, spark_metric: str = "temperature") -> None:
        self.spark_metric = spark_metric
        self.devices: dict[str, DeviceReadings] = {}
        self._tenants: dict[str, str] = {}
        self._series: dict[str, _Series] = {}
        self.applied = 0
        self.skipped = 0

    def apply(self, body: bytes | str, *, arrival: float) -> tuple[str, DeviceReadings] | None:
        """Take one stream record (see the module docstring); the device id and its state
        when it was taken, None when skipped."""
        try:
            record = orjson.loads(body)
            device_id = record["device_id"]
            tenant_id = record["tenant_id"]
            readings = record["readings"]
            seq = int(record.get("seq") or 0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.skipped += 1
            return None
        if (record.get("kind", "telemetry") != "telemetry" or type(device_id) is not str
                or type(tenant_id) is not str or type(readings) is not dict):
            self.skipped += 1
            return None
        held = self.devices.get(device_id)
        if held is None:
            tenant_id = self._tenants.setdefault(tenant_id, tenant_id)  # one copy per tenant
            metric = (self.spark_metric if self.spark_metric in readings
                      else min(readings) if readings else "")
            held = self.devices[device_id] = DeviceReadings(tenant_id, metric)
        elif held.tenant_id != tenant_id or seq <= held.seq:
            # a repeat, a late record, or a device id claimed by another tenant: the first
            # tenant keeps it (the telemetry worker is the one that rejects such records)
            self.skipped += 1
            return None
        held.seq = seq
        ts = record.get("ts")
        held.ts = float(ts) if isinstance(ts, (int, float)) else arrival
        held.arrival = arrival
        # as text: orjson's bytes keep the 4 KB buffer they were written into
        held.readings = orjson.dumps(readings).decode()
        value = readings.get(held.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            held.ring[held.count % SPARK_POINTS] = value
            held.count += 1
        series = self._series.get(tenant_id)
        if series is None:
            series = self._series[tenant_id] = _Series()
        series.add(int(arrival))
        self.applied += 1
        return device_id, held

    def apply_messages(self, messages: Sequence[Message], *,
                       arrival: float) -> list[tuple[str, DeviceReadings]]:
        """`apply` for each message body; the ones taken, in order."""
        taken = []
        for message in messages:
            found = self.apply(message.body, arrival=arrival)
            if found is not None:
                taken.append(found)
        return taken

    def get(self, tenant_id: str, device_id: str) -> DeviceReadings | None:
        """A device's readings, only for its own tenant."""
        held = self.devices.get(device_id)
        return held if held is not None and held.tenant_id == tenant_id else None

    def rate(self, tenant_id: str, now: float) -> list[int]:
        """The tenant's readings per second, the last SERIES_SECONDS seconds, oldest first."""
        series = self._series.get(tenant_id)
        return series.points(now) if series is not None else [0] * SERIES_SECONDS


class Viewer:
    """One viewer (SSE connection) of `tenant_id`: the devices it watches, those with a
    reading not yet sent, and when each was last sent."""

    __slots__ = ("dirty", "last_sent", "sent_devices", "tenant_id", "watched")

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.watched: frozenset[str] = frozenset()
        self.dirty: set[str] = set()
        self.last_sent: dict[str, float] = {}
        self.sent_devices = 0

    def watch(self, device_ids: Iterable[str]) -> frozenset[str]:
        """Watch these devices (the first MAX_WATCHED) instead of the previous ones; the new
        set. Raises nothing: ids are not checked here (readings of another tenant's device
        never reach this viewer: `Hub` only marks viewers of the reading's tenant)."""
        watched = frozenset(list(dict.fromkeys(device_ids))[:MAX_WATCHED])
        self.dirty &= watched
        self.last_sent = {d: t for d, t in self.last_sent.items() if d in watched}
        self.watched = watched
        return watched

    def mark(self, device_id: str) -> None:
        self.dirty.add(device_id)

    def due(self, now: float, *, min_interval: float = MIN_INTERVAL) -> list[str]:
        """The dirty devices not sent within `min_interval` seconds; they count as sent at
        `now` (the others stay dirty for a later call)."""
        if not self.dirty:
            return []
        out = [d for d in self.dirty if now - self.last_sent.get(d, -math.inf) >= min_interval]
        for device_id in out:
            self.dirty.discard(device_id)
            self.last_sent[device_id] = now
        self.sent_devices += len(out)
        return out


def readings_frame(view: ReadingsView, tenant_id: str, device_ids: Iterable[str], *,
                   now: float) -> dict[str, Any]:
    """The payload of one `readings` SSE event: the latest readings of those of the devices
    that are `tenant_id`'s."""
    devices = []
    for device_id in device_ids:
        held = view.get(tenant_id, device_id)
        if held is not None:
            devices.append(held.to_json(device_id))
    return {"sent_at": now, "devices": devices}


def fleet_frame(view: ReadingsView, tenant_id: str, *, now: float,
                online: Sequence[int], counts: Mapping[str, int]) -> dict[str, Any]:
    """The payload of one `fleet` SSE event: the charts' series (readings/s, online)."""
    return {"sent_at": now, "readings_per_second": view.rate(tenant_id, now),
            "online": list(online), "counts": dict(counts)}
