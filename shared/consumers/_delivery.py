"""What a host lets a running handler do with its delivery, and the one implementation every
host uses.

A host (the SQS poller, a Lambda adapter) wraps its call of a `BatchHandler` in
`delivery_control(progress)`; `batch_handler` reads it through a context variable, so
`HandlerContext.heartbeat()` reaches the host and every finished message is reported before
the batch is. `BatchProgress` keeps those early outcomes: when a batch is cut short (a drain
deadline, a Lambda function's timeout) the host settles what finished by its own outcome
(`BatchProgress.result()`) instead of handling it twice.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from shared.consumers._message import BatchResult, Message, Outcome

__all__ = ["BatchProgress", "DeliveryControl", "Extend", "current_control", "delivery_control"]


class DeliveryControl(Protocol):
    """What a host lets a running handler do with its delivery (`HandlerContext.heartbeat`)."""

    async def extend(self, message: Message, seconds: float | None = None) -> None:
        """Keep `message` invisible for `seconds` more (None: the host's visibility timeout)."""
        ...

    def completed(
        self, message: Message, outcome: Outcome, reason: str | None, delay: float | None
    ) -> None:
        """`message` is finished with `outcome`, before the batch is. A host uses this only
        if the batch is cancelled (a drain deadline): finished messages are settled by their
        own outcome instead of being released and handled twice."""
        ...


Extend = Callable[[Message, "float | None"], Awaitable[None]]
"""A host's way to keep a message for longer: `await extend(message, seconds)`."""


class BatchProgress:
    """The `DeliveryControl` of one batch: heartbeats go to the host's `extend` (None: a host
    where the platform owns visibility, as a Lambda event source mapping does, and a
    heartbeat does nothing), early per-message outcomes are kept for `result()`."""

    def __init__(self, extend: Extend | None = None) -> None:
        self._extend = extend
        self._outcomes: dict[str, Outcome] = {}
        self._reasons: dict[str, str] = {}
        self._delays: dict[str, float] = {}

    async def extend(self, message: Message, seconds: float | None = None) -> None:
        if self._extend is not None:
            await self._extend(message, seconds)

    def completed(
        self, message: Message, outcome: Outcome, reason: str | None, delay: float | None
    ) -> None:
        self._outcomes[message.id] = outcome
        if reason is not None:
            self._reasons[message.id] = reason
        if delay is not None:
            self._delays[message.id] = delay

    def result(self) -> BatchResult:
        """What finished so far (a snapshot): messages not in it were not finished."""
        return BatchResult(dict(self._outcomes), dict(self._reasons), dict(self._delays))


_CONTROL: contextvars.ContextVar[DeliveryControl | None] = contextvars.ContextVar(
    "fleetline_delivery_control", default=None
)


@contextlib.contextmanager
def delivery_control(control: DeliveryControl | None) -> Iterator[None]:
    """Hosts wrap their call of a `BatchHandler` in this so handlers can heartbeat."""
    token = _CONTROL.set(control)
    try:
        yield
    finally:
        _CONTROL.reset(token)


def current_control() -> DeliveryControl | None:
    """The control of the batch being handled in this context (None outside a host)."""
    return _CONTROL.get()
