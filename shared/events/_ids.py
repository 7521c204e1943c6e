"""Event ids: UUIDv7 (RFC 9562), rendered as the canonical 36-character string.

Why UUIDv7: it is a UUID (every store and tool accepts it), its first 48 bits are the Unix time
in milliseconds, so ids sort by creation time as strings and as bytes, and 74 random bits keep
them unique across processes without coordination. Within one process ids are also strictly
increasing: the 12-bit `rand_a` field is a counter that restarts at a random value each
millisecond (RFC 9562 section 6.2, method 1); when it overflows, the timestamp is advanced by
one millisecond rather than going backwards.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["event_id_time_ms", "new_event_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_event_id() -> str:
    """A new UUIDv7 string, strictly greater than the previous one made by this process."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Start low in the 12-bit space so a burst within one millisecond rarely overflows.
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def event_id_time_ms(event_id: str) -> int:
    """The Unix time in milliseconds encoded in a UUIDv7 id.

    Raises:
        ValueError: `event_id` is not a version-7 UUID.
    """
    parsed = uuid.UUID(event_id)
    if parsed.version != 7:
        raise ValueError(f"event_id must be a UUIDv7, got version {parsed.version}")
    return parsed.int >> 80
