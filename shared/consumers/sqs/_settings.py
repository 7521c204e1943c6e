"""How an `SqsConsumer` is configured (`SqsSettings`, `DeadLetterMode`) and what it reports
(`SqsConsumerStatistics`). Values only; the poller that uses them is `_poller.SqsConsumer`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shared.consumers._backoff import MAX_VISIBILITY_SECONDS, Backoff

__all__ = ["DeadLetterMode", "SqsConsumerStatistics", "SqsSettings"]


class DeadLetterMode(enum.StrEnum):
    """How a message the handler gave up on reaches the DLQ.

    SEND (default): the consumer sends it to the DLQ named by the queue's RedrivePolicy
    (or `SqsSettings.dead_letter_queue_url`) with the reason in the `fleetline.dead-letter`
    message attribute, then deletes it: one receive, reason kept with the message.
    REDRIVE: the consumer makes it visible again at once (visibility 0) and lets the
    queue's redrive move it after maxReceiveCount receives; the reason is only in the logs.
    Needs no sqs:SendMessage permission on the DLQ.
    """

    SEND = "send"
    REDRIVE = "redrive"


@dataclass(frozen=True, kw_only=True)
class SqsSettings:
    """How an `SqsConsumer` polls, bounds, extends and retries. Defaults and why:

    - `wait_time_seconds` 20: the longest long poll; an idle queue costs 3 requests/minute.
    - `max_messages` 10: the largest receive batch; one receive and one delete per 10.
    - `max_in_flight` 20: two batches: one is handled while the next is received, and a
      slow downstream sees at most this many concurrent messages (backpressure: no receive
      while the bound is reached).
    - `pollers` 1: raise for high-throughput queues where receive latency is the limit.
    - `visibility_timeout` None: the queue's own; set it to receive with another one.
    - `heartbeat_interval` 1 s and `extend_when_remaining` 5 s (AWS .NET Message Processing
      Framework defaults): a running message is extended by a full visibility timeout when
      fewer than 5 s are left (at most half the timeout, for very short timeouts).
    - `delete_flush_delay` 0.05 s: deletes from concurrent batches share DeleteMessageBatch
      calls; a full batch of 10 is flushed at once.
    - `backoff`: RETRY delays, base 1 s, cap 900 s, full jitter, by receive count.
    - `drain_seconds` 45: shorter than the ECS stopTimeout of 60 s used by our task
      definitions, so releasing and flushing finish before SIGKILL.
    - `dead_letter`: see `DeadLetterMode`; `dead_letter_queue_url` overrides the one from the
      queue's RedrivePolicy.
    - `receive_error_backoff`: delay between failed receives (throttling, outage).

    Raises ValueError naming the setting when a value is out of range.
    """

    wait_time_seconds: int = 20
    max_messages: int = 10
    max_in_flight: int = 20
    pollers: int = 1
    visibility_timeout: int | None = None
    heartbeat_interval: float = 1.0
    extend_when_remaining: float = 5.0
    delete_flush_delay: float = 0.05
    backoff: Backoff = field(default_factory=Backoff)
    drain_seconds: float = 45.0
    dead_letter: DeadLetterMode = DeadLetterMode.SEND
    dead_letter_queue_url: str | None = None
    receive_error_backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0))

    def __post_init__(self) -> None:
        if not 0 <= self.wait_time_seconds <= 20:
            raise ValueError(f"wait_time_seconds must be 0..20, got {self.wait_time_seconds!r}")
        if not 1 <= self.max_messages <= 10:
            raise ValueError(f"max_messages must be 1..10, got {self.max_messages!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight!r}")
        if self.pollers < 1:
            raise ValueError(f"pollers must be >= 1, got {self.pollers!r}")
        if self.visibility_timeout is not None and not (
            1 <= self.visibility_timeout <= MAX_VISIBILITY_SECONDS
        ):
            raise ValueError(
                f"visibility_timeout must be 1..{MAX_VISIBILITY_SECONDS}, "
                f"got {self.visibility_timeout!r}"
            )
        for name in ("heartbeat_interval", "extend_when_remaining"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("delete_flush_delay", "drain_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")


@dataclass(frozen=True, kw_only=True)
class SqsConsumerStatistics:
    """Counters since `run()` started (an immutable snapshot: `SqsConsumer.statistics()`)."""

    received: int = 0
    succeeded: int = 0
    duplicates: int = 0
    retried: int = 0
    released: int = 0
    dead_lettered: int = 0
    deleted: int = 0
    delete_failures: int = 0
    visibility_extensions: int = 0
    receive_requests: int = 0
    empty_receives: int = 0
    handler_errors: int = 0
    in_flight: int = 0
    batches: int = 0
    handler_seconds: float = 0.0
    max_lag_seconds: float = 0.0
