"""Configuration of idempotency for outside effects."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IdempotencyConfig"]


@dataclass(frozen=True, kw_only=True)
class IdempotencyConfig:
    """Where records live and how long they hold.

    - `namespace` keeps the keys of different effects apart (`payments.charge`).
    - `lease`: seconds an INPROGRESS record is held without a heartbeat; a crashed holder
      blocks the key at most this long (not the whole record lifetime).
    - `heartbeat_interval`: how often the holder renews the lease (default lease / 3).
    - `expires_after`: seconds a COMPLETED record answers repeats; then TTL removes it.
    - `max_result_bytes`: results larger than this are refused (DynamoDB items are <= 400 KB).
    """

    table: str
    namespace: str
    lease: float = 10.0
    heartbeat_interval: float | None = None
    expires_after: float = 3600.0
    key_attribute: str = "id"
    ttl_attribute: str = "expires_at"
    hash_payload: bool = True
    max_result_bytes: int = 300_000

    def __post_init__(self) -> None:
        if not self.table:
            raise ValueError("table must not be empty")
        if not self.namespace:
            raise ValueError("namespace must not be empty")
        if self.lease <= 0:
            raise ValueError("lease must be positive")
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.expires_after <= self.lease:
            raise ValueError("expires_after must be longer than lease")

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_interval if self.heartbeat_interval is not None else self.lease / 3
