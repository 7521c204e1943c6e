"""Settings and counters of a stream consumer: `StreamConsumerConfig` (what a Kinesis or
DynamoDB Streams consumer is told) and `StreamConsumerStatistics` (what it reports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.consumers.streams._source import InitialPosition

__all__ = ["StreamConsumerConfig", "StreamConsumerStatistics"]


@dataclass(frozen=True, kw_only=True)
class StreamConsumerConfig:
    """Settings of a Kinesis / DynamoDB Streams consumer. Defaults suit production; tests
    shorten the durations.

    lease_table:        DynamoDB table with partition key `lease_key` (S) (stack: LeasesTable).
    application:        names the consumer group; workers with the same application share the
                        stream's shards. Lease keys are "<application>#<shard id>".
    worker_id:          unique per process (default: host-pid-random).
    failure_queue_url:  SQS queue for records that cannot be processed (stack:
                        TelemetryFailureQueue). None: such records are logged at error level
                        with their shard id and sequence number and skipped.
    lease_duration:     a lease not renewed for this long may be taken (default 10 s, as KCL's
                        failover time): the time a dead worker's shards wait.
    renew_interval:     default lease_duration / 3, so two renewals can fail before expiry.
    take_interval:      rebalancing round (default lease_duration): each round lists the
                        leases once and takes or steals.
    shard_sync_interval: how often the shard list is read to find new shards (default 60 s;
                        a shard reaching its end triggers a sync at once).
    idle_backoff:       least time from the start of one read of a shard to the next when
                        the last read found no backlog (default 1 s: Kinesis allows 5 reads
                        per second per shard shared by all consumers).
    limit:              records per GetRecords (default and cap: the service maximum,
                        10,000 for Kinesis and 1,000 for DynamoDB Streams), so a busy shard
                        costs one request per page.
    max_attempts:       handler attempts per record before it goes to the failure queue.
    retry_backoff / retry_backoff_max: exponential backoff with full jitter between attempts.
    max_leases:         at most this many shards per worker (None: no cap).
    handoff_timeout:    a worker rebalancing asks the owner to hand a lease over (it finishes
                        its batch, checkpoints, releases: no duplicates); after this long
                        without a release it takes the lease by force. None: always by force.
    shutdown_grace:     after stop(), in-flight handlers get this long before they are
                        cancelled (keep it below the ECS stopTimeout, default 30 s).
    """

    lease_table: str
    application: str
    worker_id: str | None = None
    failure_queue_url: str | None = None
    initial_position: InitialPosition = InitialPosition.TRIM_HORIZON
    lease_duration: float = 10.0
    renew_interval: float | None = None
    take_interval: float | None = None
    shard_sync_interval: float = 60.0
    idle_backoff: float = 1.0
    limit: int | None = None
    max_attempts: int = 5
    retry_backoff: float = 0.5
    retry_backoff_max: float = 20.0
    max_leases: int | None = None
    handoff_timeout: float | None = 30.0
    shutdown_grace: float = 20.0

    def __post_init__(self) -> None:
        if not self.lease_table:
            raise ValueError("lease_table must not be empty")
        if not self.application or "#" in self.application:
            raise ValueError(f"application must be non-empty without '#': {self.application!r}")
        positive = {
            "lease_duration": self.lease_duration,
            "shard_sync_interval": self.shard_sync_interval,
            "shutdown_grace": self.shutdown_grace,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name, maybe in {
            "renew_interval": self.renew_interval, "take_interval": self.take_interval,
            "handoff_timeout": self.handoff_timeout,
        }.items():
            if maybe is not None and maybe <= 0:
                raise ValueError(f"{name} must be positive, got {maybe}")
        if self.renew_interval is not None and self.renew_interval >= self.lease_duration:
            raise ValueError("renew_interval must be shorter than lease_duration")
        for name, value in {
            "idle_backoff": self.idle_backoff, "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
        }.items():
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_leases is not None and self.max_leases < 1:
            raise ValueError(f"max_leases must be at least 1, got {self.max_leases}")

    @property
    def effective_renew_interval(self) -> float:
        return self.renew_interval if self.renew_interval is not None else self.lease_duration / 3

    @property
    def effective_take_interval(self) -> float:
        return self.take_interval if self.take_interval is not None else self.lease_duration


@dataclass(frozen=True, kw_only=True)
class StreamConsumerStatistics:
    """A snapshot of one consumer's counters since it started."""

    worker_id: str
    shards: tuple[str, ...]
    records_received: int = 0
    records_succeeded: int = 0
    records_duplicate: int = 0
    records_retried: int = 0
    records_dead_lettered: int = 0
    handler_calls: int = 0
    reads: int = 0
    checkpoints: int = 0
    leases_taken: int = 0
    leases_stolen: int = 0
    leases_lost: int = 0
    leases_handed_off: int = 0
    handoffs_requested: int = 0
    lease_rounds: int = 0
    millis_behind: Mapping[str, int] = field(default_factory=dict)
