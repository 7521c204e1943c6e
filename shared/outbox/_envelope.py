"""Envelopes for the events a unit of work commits (the wire shape of docs/architecture.md).

The trace context is captured here, at commit time, so the relay and every consumer continue
the trace of the request that caused the event.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import propagate

from shared.outbox._model import EventDraft

__all__ = ["new_envelope", "new_event_id"]


def new_event_id(now: float | None = None) -> str:
    """A UUIDv7: unique and ordered by creation time (milliseconds)."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def trace_carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def new_envelope(
    draft: EventDraft, *, aggregate_id: str, sequence: int, now: float | None = None,
    trace: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The envelope of `draft` as a JSON-ready dict."""
    at = time.time() if now is None else now
    envelope: dict[str, Any] = {
        "id": new_event_id(at),
        "type": draft.type,
        "source": draft.source,
        "version": draft.version,
        "time": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        "aggregate_id": aggregate_id,
        "sequence": sequence,
        "data": dict(draft.data),
    }
    carrier = dict(trace) if trace is not None else trace_carrier()
    if carrier:
        envelope["trace"] = carrier
    if draft.correlation_id:
        envelope["correlation_id"] = draft.correlation_id
    if draft.causation_id:
        envelope["causation_id"] = draft.causation_id
    if draft.tenant_id:
        envelope["tenant_id"] = draft.tenant_id
    return envelope
