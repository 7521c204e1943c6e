"""The Lambda adapter for an EventBridge rule target: one event
(`shared.consumers.eventbridge.message_from_eventbridge`), an asynchronous invocation. A RETRY
or DEAD_LETTER outcome raises `InvocationFailed`, so Lambda's retries and the on-failure
destination apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from shared.aws import AwsClients
from shared.consumers import BatchHandler, Outcome
from shared.consumers.eventbridge import message_from_eventbridge
from shared.errors import FleetlineError
from shared.hosts._worker import HandlerFactory
from shared.hosts.lambda_._runtime import (
    LambdaHandler,
    LambdaRuntime,
    check_sources,
    default_runtime,
    entry_point,
    handler_of,
    run_batch,
)

__all__ = ["InvocationFailed", "eventbridge_handler"]

_log = structlog.get_logger("shared.hosts.lambda")


class InvocationFailed(FleetlineError):
    """Raised out of an EventBridge-triggered function so Lambda retries it (asynchronous
    invocation) and, after its retries, sends it to the on-failure destination."""

    def __init__(self, reason: str, *, outcome: Outcome) -> None:
        super().__init__(reason)
        self.outcome = outcome


def eventbridge_handler(
    handler: BatchHandler | None = None,
    *,
    setup: HandlerFactory | None = None,
    runtime: LambdaRuntime | None = None,
) -> LambdaHandler:
    """A Lambda entry point for an EventBridge rule target. Returns None on SUCCEEDED or
    DUPLICATE; raises `InvocationFailed` on RETRY and DEAD_LETTER.

    Raises ValueError unless exactly one of handler and setup is given.
    """
    check_sources(handler, setup)
    rt = default_runtime(runtime)

    async def invoke(aws: AwsClients, event: Mapping[str, Any], context: Any) -> None:
        message = message_from_eventbridge(event)
        batch = await handler_of(rt, aws, handler, setup)
        result = await run_batch(batch, [message], context)
        outcome = result.outcomes.get(message.id, Outcome.RETRY)
        if outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE):
            return
        reason = result.reasons.get(message.id, "not finished")
        _log.warning("event failed", event_id=message.id, outcome=outcome.value, error=reason)
        raise InvocationFailed(reason, outcome=outcome)

    return entry_point(rt, invoke)
