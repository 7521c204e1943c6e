"""Building PutEvents entries from envelopes, and EventBridge's size rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from shared.events._envelope import Envelope
from shared.events._errors import EventTooLargeError
from shared.tracing import XRAY_HEADER

__all__ = ["MAX_PUT_EVENTS_ENTRY_BYTES", "put_events_entry_size", "to_put_events_entry"]

MAX_PUT_EVENTS_ENTRY_BYTES: Final = 256 * 1024
"""EventBridge refuses a PutEvents entry larger than 256 KB (262,144 bytes)."""

_TIME_BYTES: Final = 14  # how EventBridge counts an entry's Time field


def put_events_entry_size(entry: Mapping[str, Any]) -> int:
    """The size EventBridge counts for one PutEvents entry: the UTF-8 bytes of `Source`,
    `DetailType`, `Detail` and each of `Resources`, plus 14 for `Time` when set (AWS's
    "Calculating PutEvents event entry size"). We also count `TraceHeader`, which AWS does
    not document either way: erring on the large side costs at most a claim check."""
    size = _TIME_BYTES if entry.get("Time") is not None else 0
    for key in ("Source", "DetailType", "Detail", "TraceHeader"):
        value = entry.get(key)
        if isinstance(value, str):
            size += len(value.encode("utf-8"))
    for resource in entry.get("Resources") or ():
        size += len(str(resource).encode("utf-8"))
    return size


def to_put_events_entry(
    envelope: Envelope, bus_name: str, *, limit: int = MAX_PUT_EVENTS_ENTRY_BYTES
) -> dict[str, Any]:
    """The PutEvents entry for `envelope` on `bus_name`: `Source` = envelope.source,
    `DetailType` = envelope.type, `Detail` = the envelope JSON, `EventBusName`, and
    `TraceHeader` when the envelope's trace carries an X-Ray header.

    Raises:
        EventTooLargeError: the entry exceeds `limit` (claim-check the data first:
            `ClaimCheck.offload`).
        ValueError: `bus_name` is empty.
    """
    if not bus_name:
        raise ValueError("bus_name must not be empty")
    entry: dict[str, Any] = {
        "Source": envelope.source,
        "DetailType": envelope.type,
        "Detail": envelope.to_json(),
        "EventBusName": bus_name,
    }
    header = envelope.trace.get(XRAY_HEADER)
    if header:
        entry["TraceHeader"] = header
    size = put_events_entry_size(entry)
    if size > limit:
        raise EventTooLargeError(size, limit)
    return entry
