"""UnitOfWork.save refuses the same item twice (and only the same item)."""

from __future__ import annotations

import pytest

from shared.outbox import Aggregate, ItemRef, OutboxError, UnitOfWork


def aggregate(key: str) -> Aggregate:
    return Aggregate(ref=ItemRef(table="t", key={"pk": key}), state={})


def test_save_twice_is_refused_others_are_staged() -> None:
    uow = UnitOfWork(None)  # type: ignore[arg-type]  # save does no I/O
    for key in ("a", "b", "c"):
        uow.save(aggregate(key), {"n": 1})
    with pytest.raises(OutboxError, match="staged already"):
        uow.save(aggregate("b"), {"n": 2})
    assert [w.aggregate.ref.key["pk"] for w in uow.staged] == ["a", "b", "c"]
