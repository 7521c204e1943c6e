"""shared.logging: JSON lines carrying trace, span and message ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import tracing
from shared.logging import bind_message_context, configure_logging, message_context


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(service="orders-worker", level="DEBUG", stream=stream, cache_loggers=False)
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_a_span_and_a_message_context_carries_every_id(out: io.StringIO) -> None:
    tracing.configure_tracing("test-logging", exporter=InMemorySpanExporter())
    log = structlog.get_logger("orders.handler")
    with (
        tracing.tracer("t").start_as_current_span("handle") as span,
        bind_message_context(correlation_id="req-1", message_id="m-1", event_id="e-1"),
    ):
        log.info("order.placed", order_id="o-1")
    ctx = span.get_span_context()

    (line,) = _lines(out)
    assert line["event"] == "order.placed"
    assert line["order_id"] == "o-1"
    assert line["level"] == "info"
    assert line["logger"] == "orders.handler"
    assert line["service"] == "orders-worker"
    assert str(line["timestamp"]).endswith("Z")
    assert line["trace_id"] == f"{ctx.trace_id:032x}"
    assert line["xray_trace_id"] == tracing.format_xray_trace_id(ctx.trace_id)
    assert line["span_id"] == f"{ctx.span_id:016x}"
    assert (line["correlation_id"], line["message_id"], line["event_id"]) == ("req-1", "m-1", "e-1")


def test_outside_any_context_no_ids_are_invented(out: io.StringIO) -> None:
    structlog.get_logger("x").warning("idle")
    (line,) = _lines(out)
    assert not {"trace_id", "span_id", "correlation_id", "message_id"} & set(line)
    assert line["level"] == "warning"


def test_nested_contexts_add_and_restore(out: io.StringIO) -> None:
    with bind_message_context(correlation_id="c-1", message_id="m-1"):
        with bind_message_context(message_id="m-2", receive_count="3"):
            assert dict(message_context()) == {
                "correlation_id": "c-1", "message_id": "m-2", "receive_count": "3",
            }
            structlog.get_logger("x").info("inner")
        structlog.get_logger("x").info("outer", message_id="explicit-wins")
    assert dict(message_context()) == {}
    inner, outer = _lines(out)
    assert (inner["correlation_id"], inner["message_id"], inner["receive_count"]) == (
        "c-1", "m-2", "3",
    )
    assert outer["message_id"] == "explicit-wins"
    assert "receive_count" not in outer


def test_stdlib_records_are_json_too_and_levels_filter(out: io.StringIO) -> None:
    with bind_message_context(message_id="m-9"):
        logging.getLogger("some.library").error("boom %s", 42)
    logging.getLogger("botocore.hooks").info("chatty")  # held back: below WARNING
    (line,) = _lines(out)
    assert line["event"] == "boom 42"
    assert line["level"] == "error"
    assert line["logger"] == "some.library"
    assert line["message_id"] == "m-9"


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="service"):
        configure_logging(service="")
    with pytest.raises(ValueError, match="level"):
        configure_logging(service="s", level="LOUD")


def test_testing_helpers_capture_the_real_pipeline() -> None:
    from shared.testing import capture_logs, capture_spans

    with capture_spans() as spans, capture_logs(service="svc") as logs:
        carrier = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
        with tracing.consumer_span(carrier, "consume"), bind_message_context(message_id="m-1"):
            structlog.get_logger("h").info("handled")
    (line,) = logs.events("handled")
    assert line["trace_id"] == "ab" * 16  # the producer's trace, continued by the consumer
    assert line["span_id"] == f"{spans.one('consume').context.span_id:016x}"  # type: ignore[union-attr]
    assert line["message_id"] == "m-1"
    assert line["service"] == "svc"
