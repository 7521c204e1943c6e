"""Structured JSON logs: one JSON object per line on stdout, for awslogs / CloudWatch Logs.

    configure_logging(service="orders-worker", level="INFO")
    log = structlog.get_logger(__name__)
    with bind_message_context(message_id=m.id, event_id=e.id, correlation_id=e.correlation_id):
        log.info("order.placed", order_id=...)

Every line carries `timestamp` (UTC ISO 8601), `level`, `logger`, `event` (the message),
`service`; inside a span `trace_id` (32 hex digits), `xray_trace_id` (`1-xxxxxxxx-...`, what the
X-Ray console searches for) and `span_id`; inside `bind_message_context` the ids bound there
(`correlation_id`, `message_id`, `event_id`, ...); and whatever `structlog.contextvars` binds.
Records from the standard `logging` module (botocore, asyncio, ...) go through the same
processors, so they are JSON too.

Never log secrets or whole payloads; log ids and the fields a reader needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "add_message_context",
    "add_trace_ids",
    "bind_message_context",
    "configure_logging",
    "message_context",
]

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_MESSAGE_CONTEXT: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "fleetline_message_context", default=_EMPTY
)


def message_context() -> Mapping[str, str]:
    """The ids bound by the innermost `bind_message_context` (read-only; empty outside)."""
    return _MESSAGE_CONTEXT.get()


@contextlib.contextmanager
def bind_message_context(
    *,
    correlation_id: str | None = None,
    message_id: str | None = None,
    event_id: str | None = None,
    **extra: str | None,
) -> Iterator[Mapping[str, str]]:
    """Add ids to every log line emitted inside the block (in this task and the tasks it
    starts: contextvars are copied into new tasks). Nested blocks add to and override the
    outer ones; None values are skipped. Yields the combined mapping."""
    combined = dict(_MESSAGE_CONTEXT.get())
    given = {
        "correlation_id": correlation_id,
        "message_id": message_id,
        "event_id": event_id,
        **extra,
    }
    combined.update({k: v for k, v in given.items() if v is not None})
    frozen = MappingProxyType(combined)
    token = _MESSAGE_CONTEXT.set(frozen)
    try:
        yield frozen
    finally:
        _MESSAGE_CONTEXT.reset(token)


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Processor: `trace_id`, `xray_trace_id`, `span_id` of the current OpenTelemetry span."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        hex_id = format(span_context.trace_id, "032x")
        event_dict.setdefault("trace_id", hex_id)
        event_dict.setdefault("xray_trace_id", f"1-{hex_id[:8]}-{hex_id[8:]}")
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict


def add_message_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Processor: the ids bound by `bind_message_context` (explicit log fields win)."""
    for key, value in _MESSAGE_CONTEXT.get().items():
        event_dict.setdefault(key, value)
    return event_dict


def _add_service(service: str) -> Processor:
    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _level_number(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"level must be a logging level name or number, got {level!r}")
    return number


def configure_logging(
    *,
    service: str,
    level: int | str = "INFO",
    stream: TextIO | None = None,
    cache_loggers: bool = True,
) -> None:
    """Make structlog (and the standard `logging` module) write JSON lines to `stream`
    (default: stdout, read at each write so a replaced `sys.stdout` is honoured).

    Call once at process start-up, at the edge (worker host, Lambda adapter, CLI). Calling again
    reconfigures (tests do); pass `cache_loggers=False` when loggers made before a later
    reconfiguration must follow it.

    Raises:
        ValueError: `service` is empty or `level` is not a level.
    """
    if not service:
        raise ValueError("service must not be empty")
    number = _level_number(level)
    shared_processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
        add_trace_ids,
        add_message_context,
    ]
    renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=_StreamLoggerFactory(stream),
        cache_logger_on_first_use=cache_loggers,
    )
    # The standard library's records (botocore, asyncio, anyio ...) through the same chain.
    handler = logging.StreamHandler(_StdoutProxy(stream))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fleetline", False)]:
        root.removeHandler(old)
    handler._fleetline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(number)
    # botocore is chatty at INFO and DEBUG (and may log request bodies): keep it to warnings.
    logging.getLogger("botocore").setLevel(max(number, logging.WARNING))
    logging.getLogger("aiobotocore").setLevel(max(number, logging.WARNING))


class _StdoutProxy:
    """A stream that resolves to `stream` or the current `sys.stdout` at each write."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return (self._stream or sys.stdout).write(text)

    def flush(self) -> None:
        (self._stream or sys.stdout).flush()


class _LineLogger:
    """The final logger: writes one rendered line. Every level method is the same."""

    def __init__(self, stream: TextIO | None, name: str) -> None:
        self._stream = stream
        self.name = name  # read by structlog.stdlib.add_logger_name

    def msg(self, message: str) -> None:
        out = self._stream or sys.stdout
        out.write(message + "\n")
        out.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


class _StreamLoggerFactory:
    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _LineLogger:
        return _LineLogger(self._stream, str(args[0]) if args else "")
