"""Test tools that are part of the product: services' tests use them as the framework's do.

- `capture_spans()`: the real OpenTelemetry SDK with an in-memory exporter.
- `capture_logs()`: the real `shared.logging` JSON pipeline, captured and parsed.
- `LossyProxy`: an HTTP proxy in front of the emulator that loses answers after the write
  (or fails requests before it) on a share of calls.
"""

from shared.testing._faults import LossyProxy, ProxyStatistics
from shared.testing._observability import CapturedLogs, CapturedSpans, capture_logs, capture_spans

__all__ = [
    "CapturedLogs",
    "CapturedSpans",
    "LossyProxy",
    "ProxyStatistics",
    "capture_logs",
    "capture_spans",
]
