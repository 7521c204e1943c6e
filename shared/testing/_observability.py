"""Test tools for traces and logs: the real SDK and the real log pipeline, captured in memory."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.logging import configure_logging
from shared.tracing import configure_tracing

__all__ = ["CapturedLogs", "CapturedSpans", "capture_logs", "capture_spans"]


class CapturedSpans:
    """Finished spans of the real SDK, in end order."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """Every finished span called `name`."""
        return [span for span in self.spans if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        """The only finished span called `name`.

        Raises:
            AssertionError: there are none or several (the names seen are listed).
        """
        found = self.named(name)
        if len(found) != 1:
            raise AssertionError(
                f"expected one span {name!r}, found {len(found)} among "
                f"{[span.name for span in self.spans]}"
            )
        return found[0]

    def clear(self) -> None:
        self.exporter.clear()


@contextlib.contextmanager
def capture_spans(service_name: str = "test") -> Iterator[CapturedSpans]:
    """Configure tracing with an in-memory exporter (spans exported as they end). Spans made
    through `shared.tracing` from here on land in the returned `CapturedSpans`, until the next
    `configure_tracing`."""
    exporter = InMemorySpanExporter()
    configure_tracing(service_name, exporter=exporter)
    yield CapturedSpans(exporter)  # spans stay readable after the block


class CapturedLogs:
    """The JSON lines `shared.logging` wrote, parsed."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._stream.getvalue().splitlines() if line]

    def events(self, event: str) -> list[dict[str, Any]]:
        """Every line whose `event` (the message) is `event`."""
        return [line for line in self.lines if line.get("event") == event]


@contextlib.contextmanager
def capture_logs(service: str = "test", level: str = "DEBUG") -> Iterator[CapturedLogs]:
    """Run the real `shared.logging` pipeline into memory for the block, then restore
    structlog's defaults and the root logger's handlers and level."""
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(service=service, level=level, stream=stream, cache_loggers=False)
    try:
        yield CapturedLogs(stream)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(root_level)
