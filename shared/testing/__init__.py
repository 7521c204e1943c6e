"""Test tools that are part of the product: services' tests use them as the framework's do.

- `capture_spans()`: the real OpenTelemetry SDK with an in-memory exporter.
- `capture_logs()`: the real `shared.logging` JSON pipeline, captured and parsed.
- In-memory implementations of the framework's seams, each recording what crossed it:
  `MemoryBatchHandler` (a `BatchHandler`), `MemoryDeliveryControl` (what a host lets a
  handler do), `MemoryShardSource` (a `ShardSource` with resharding), `MemoryEventBus` (the
  PutEvents seam of the outbox relay), `MemoryConsumer` (what a worker host runs).
"""

from shared.testing._observability import CapturedLogs, CapturedSpans, capture_logs, capture_spans
from shared.testing._seams import (
    MemoryBatchHandler,
    MemoryConsumer,
    MemoryDeliveryControl,
    MemoryEventBus,
    MemoryShardSource,
)

__all__ = [
    "CapturedLogs",
    "CapturedSpans",
    "MemoryBatchHandler",
    "MemoryConsumer",
    "MemoryDeliveryControl",
    "MemoryEventBus",
    "MemoryShardSource",
    "capture_logs",
    "capture_spans",
]
