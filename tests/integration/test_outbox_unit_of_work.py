"""The unit of work against the emulator: conflicts, duplicates, several aggregates."""

from __future__ import annotations

import pytest

from shared.aws import AwsClients
from shared.outbox import (
    AlreadyProcessedError,
    ConcurrencyConflictError,
    ItemRef,
    OutboxError,
    UnitOfWork,
)

from ._outbox_support import OrderChanged, create_table

pytestmark = pytest.mark.emulator


async def test_a_stale_version_is_refused_and_the_current_item_returned(aws: AwsClients) -> None:
    await create_table(aws, "orders")
    ref = ItemRef(table="orders", key={"pk": "o-1"})
    first, second = UnitOfWork(aws), UnitOfWork(aws)
    a, b = await first.load(ref), await second.load(ref)
    first.save(a, {"status": "a"})
    await first.commit()
    second.save(b, {"status": "b"})
    with pytest.raises(ConcurrencyConflictError) as info:
        await second.commit()
    assert info.value.retryable
    assert list(info.value.current.values()) == [{"status": "a"}]


async def test_processed_id_makes_a_second_commit_a_duplicate(aws: AwsClients) -> None:
    await create_table(aws, "orders")
    ref = ItemRef(table="orders", key={"pk": "o-1"})
    uow = UnitOfWork(aws)
    order = await uow.load(ref)
    uow.save(order, {"n": 1}, processed_id="evt-1")
    await uow.commit()
    again = UnitOfWork(aws)
    with pytest.raises(AlreadyProcessedError):
        again.save(await again.load(ref), {"n": 2}, processed_id="evt-1")
    # Racing writer that loaded before the first commit: refused as a duplicate too.
    stale = UnitOfWork(aws)
    stale.save(order, {"n": 2}, processed_id="evt-1")
    with pytest.raises(AlreadyProcessedError):
        await stale.commit()


async def test_several_aggregates_commit_together_or_not_at_all(aws: AwsClients) -> None:
    await create_table(aws, "orders")
    refs = [ItemRef(table="orders", key={"pk": f"o-{i}"}) for i in range(3)]
    uow = UnitOfWork(aws)
    found = await uow.load_many(refs)
    for i, ref in enumerate(refs):
        uow.save(found[ref.token], {"i": i}, events=[OrderChanged(step=i)])
    envelopes = await uow.commit()
    assert [e.aggregate_id for e in envelopes] == ["o-0", "o-1", "o-2"]
    assert all(e.sequence == 1 for e in envelopes)
    # One stale aggregate cancels the whole transaction: nothing of it is written.
    fresh = UnitOfWork(aws)
    current = await fresh.load_many(refs)
    fresh.save(current[refs[0].token], {"i": 10})
    fresh.save(found[refs[1].token], {"i": 11})  # version 0: stale
    with pytest.raises(ConcurrencyConflictError):
        await fresh.commit()
    after = await UnitOfWork(aws).load(refs[0])
    assert after.state == {"i": 0}
    with pytest.raises(OutboxError, match="commit"):
        await fresh.commit()
