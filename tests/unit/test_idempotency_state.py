"""Pure decisions of idempotency: judging a stored record, keys and payload hashes."""

from __future__ import annotations

import pytest

from shared.idempotency import IdempotencyConfig, IdempotencyKeyError
from shared.idempotency._state import Record, Status, Verdict, extract_key, judge, payload_hash


def _record(status: Status, *, lease: float | None = None, expires: float = 1000.0,
            digest: str = "h") -> Record:
    return Record(key="k", status=status, owner="o", payload_hash=digest, expires_at=expires,
                  lease_until=lease, result='{"ok":true}')


def test_transitions() -> None:
    assert judge(None, "h", now=10) is Verdict.ACQUIRE
    assert judge(_record(Status.COMPLETED), "h", now=10) is Verdict.RETURN_RESULT
    assert judge(_record(Status.COMPLETED), "other", now=10) is Verdict.KEY_REUSE
    assert judge(_record(Status.IN_PROGRESS, lease=20), "h", now=10) is Verdict.IN_PROGRESS
    assert judge(_record(Status.IN_PROGRESS, lease=5), "h", now=10) is Verdict.ACQUIRE
    assert judge(_record(Status.IN_PROGRESS, lease=5), "x", now=10) is Verdict.KEY_REUSE
    # Past expires_at a record is gone, whatever TTL's lag left behind.
    assert judge(_record(Status.COMPLETED, expires=9), "other", now=10) is Verdict.ACQUIRE


def test_keys_from_expressions_and_functions() -> None:
    request = {"order": {"id": "o-1"}, "customer": "c", "amount": 3}
    assert extract_key("order.id", request) == "o-1"
    assert extract_key("[customer, amount]", request) == '["c",3]'
    assert extract_key(lambda r: r["customer"], request) == "c"
    with pytest.raises(IdempotencyKeyError, match=r"order\.missing"):
        extract_key("order.missing", request)


def test_payload_hash_ignores_key_order() -> None:
    assert payload_hash({"a": 1, "b": 2}) == payload_hash({"b": 2, "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="lease"):
        IdempotencyConfig(table="t", namespace="n", lease=0)
    with pytest.raises(ValueError, match="expires_after"):
        IdempotencyConfig(table="t", namespace="n", lease=10, expires_after=5)
    assert IdempotencyConfig(table="t", namespace="n", lease=9).heartbeat == 3
