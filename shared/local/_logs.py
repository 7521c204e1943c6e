"""Logging of the local processes: structlog JSON through `shared.logging` when it is there,
else structlog's JSON renderer with a timestamp and level (the supervisor's log and every
host's log are files, read by people and by tools)."""

from __future__ import annotations

import importlib
import logging

import structlog

__all__ = ["setup_logging"]


def setup_logging(service: str) -> None:
    """Configure structlog for this process once, naming it `service`."""
    try:
        shared_logging = importlib.import_module("shared.logging")
    except ImportError:
        shared_logging = None
    for name in ("configure", "configure_logging", "setup"):
        configure = getattr(shared_logging, name, None)
        if callable(configure):
            try:
                configure(service=service)
            except TypeError:
                configure()
            return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
