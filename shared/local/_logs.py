"""Logging of the local processes: structlog JSON lines through `shared.logging`, like the
hosts on AWS (the supervisor's log and every host's log are files read by people and tools)."""

from __future__ import annotations

import os
from typing import TextIO

from shared.logging import configure_logging

__all__ = ["setup_logging"]


def setup_logging(service: str, *, stream: TextIO | None = None) -> None:
    """Configure structlog JSON for this process, naming it `service` (LOG_LEVEL, default
    INFO), on `stream` (default stdout). `up` logs to stderr: its stdout carries READY."""
    configure_logging(service=service, level=os.environ.get("LOG_LEVEL", "INFO"), stream=stream)
