"""Test tools that are part of the product: services' tests use them as the framework's do.

- `capture_spans()`: the real OpenTelemetry SDK with an in-memory exporter.
- `capture_logs()`: the real `shared.logging` JSON pipeline, captured and parsed.
- In-memory implementations of the framework's seams, each recording what crossed it:
  `MemoryBatchHandler` (a `BatchHandler`), `MemoryDeliveryControl` (what a host lets a
  handler do), `MemoryShardSource` (a `ShardSource` with resharding), `MemoryEventBus` (the
  PutEvents seam of the outbox relay), `MemoryConsumer` (what a worker host runs).
- `KillableTasks`: named tasks a harness kills (like SIGKILL) and starts again, to play a
  service's processes in one event loop.
- `create_queue_with_dlq`: a queue, its DLQ and the RedrivePolicy between them, made through
  the API for a test against the emulator (`TestQueue`).
- `LossyProxy`: an HTTP proxy in front of the emulator that loses answers after the write
  (or fails requests before it) on a share of calls.
"""

from shared.testing._faults import LossyProxy, ProxyStatistics
from shared.testing._observability import CapturedLogs, CapturedSpans, capture_logs, capture_spans
from shared.testing._queues import TestQueue, create_queue_with_dlq
from shared.testing._seams import (
    MemoryBatchHandler,
    MemoryConsumer,
    MemoryDeliveryControl,
    MemoryEventBus,
    MemoryShardSource,
)
from shared.testing._tasks import KillableTasks, RunNamed

__all__ = [
    "CapturedLogs",
    "CapturedSpans",
    "KillableTasks",
    "LossyProxy",
    "MemoryBatchHandler",
    "MemoryConsumer",
    "MemoryDeliveryControl",
    "MemoryEventBus",
    "MemoryShardSource",
    "ProxyStatistics",
    "RunNamed",
    "TestQueue",
    "capture_logs",
    "capture_spans",
    "create_queue_with_dlq",
]
