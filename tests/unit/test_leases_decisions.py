"""Pure lease decisions: fair share, take / steal choice, expiry, parent-before-child."""

from __future__ import annotations

import pytest

from shared.consumers._lease_decisions import (
    SHARD_END,
    Lease,
    fair_share,
    is_eligible,
    is_expired,
    live_workers,
    parents_first,
    plan_leases,
)

NOW = 1_000_000


def lease(
    shard: str, owner: str | None = None, *, expires: int = NOW + 5_000,
    checkpoint: str | None = None, parents: tuple[str, ...] = (), counter: int = 1,
) -> Lease:
    return Lease(
        key=f"app#{shard}", shard_id=shard, owner=owner, counter=counter,
        expires_at_ms=expires if owner else 0, checkpoint=checkpoint, parent_shard_ids=parents,
    )


def owned(leases: list[Lease]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in leases:
        if item.owner:
            counts[item.owner] = counts.get(item.owner, 0) + 1
    return counts


@pytest.mark.parametrize(
    ("shards", "workers", "expected"), [(4, 2, 2), (5, 2, 3), (4, 3, 2), (1, 4, 1), (0, 3, 0)]
)
def test_fair_share_is_ceiling(shards: int, workers: int, expected: int) -> None:
    assert fair_share(shards, workers) == expected


def test_fair_share_refuses_no_workers() -> None:
    with pytest.raises(ValueError, match="workers"):
        fair_share(3, 0)


def test_expiry_is_inclusive_and_unowned_is_free() -> None:
    assert is_expired(lease("s1", "A", expires=NOW), NOW)
    assert not is_expired(lease("s1", "A", expires=NOW + 1), NOW)
    assert is_expired(lease("s1"), NOW)


def test_live_workers_come_from_unexpired_unfinished_leases() -> None:
    leases = [
        lease("s1", "A"),
        lease("s2", "B", expires=NOW - 1),  # B stopped renewing
        lease("s3", "C", checkpoint=SHARD_END),  # finished shards prove nothing
    ]
    assert live_workers(leases, NOW, "me") == {"A", "me"}


def test_new_worker_takes_free_leases_up_to_its_share() -> None:
    leases = [lease(f"s{i}") for i in range(4)]
    plan = plan_leases(leases, me="A", now_ms=NOW)
    assert [item.shard_id for item in plan.take] == ["s0", "s1", "s2", "s3"]
    assert plan.steal is None


def test_second_worker_steals_one_per_round_until_balanced() -> None:
    leases = [lease(f"s{i}", "A") for i in range(4)]
    rounds = 0
    while True:
        plan = plan_leases(leases, me="B", now_ms=NOW,
                           held=[x.shard_id for x in leases if x.owner == "B"])
        assert not plan.take
        if plan.steal is None:
            break
        assert plan.steal.owner == "A"
        leases = [
            lease(x.shard_id, "B") if x.shard_id == plan.steal.shard_id else x for x in leases
        ]
        rounds += 1
    assert rounds == 2
    assert owned(leases) == {"A": 2, "B": 2}
    # And A, now at its share, does not steal back.
    a_plan = plan_leases(leases, me="A", now_ms=NOW,
                         held=[x.shard_id for x in leases if x.owner == "A"])
    assert a_plan.steal is None
    assert not a_plan.take


def test_three_workers_on_four_shards_settle_at_two_one_one() -> None:
    leases = [lease("s0", "A"), lease("s1", "A"), lease("s2", "B"), lease("s3", "B")]
    plan = plan_leases(leases, me="C", now_ms=NOW)
    assert plan.target == 2
    assert plan.steal is not None
    assert plan.steal.owner == "A"  # tie on load: smaller worker id
    assert plan.steal.shard_id == "s0"
    leases[0] = lease("s0", "C")
    again = plan_leases(leases, me="C", now_ms=NOW, held=["s0"])
    assert again.steal is None  # B holds exactly the target and C is short by one only


def test_steals_from_the_most_loaded_worker() -> None:
    leases = [lease("s0", "A"), lease("s1", "B"), lease("s2", "B"), lease("s3", "B"),
              lease("s4", "B"), lease("s5", "A")]
    plan = plan_leases(leases, me="C", now_ms=NOW)
    assert plan.target == 2
    assert plan.steal is not None
    assert plan.steal.owner == "B"


def test_dead_workers_leases_are_taken_after_expiry_only() -> None:
    alive = [lease("s0", "A"), lease("s1", "A"), lease("s2", "B"), lease("s3", "B")]
    plan = plan_leases(alive, me="A", now_ms=NOW, held=["s0", "s1"])
    assert not plan.take
    assert plan.steal is None
    later = NOW + 5_000  # B's leases expire at NOW + 5000; A renewed its own
    dead = [lease("s0", "A", expires=later + 5_000), lease("s1", "A", expires=later + 5_000),
            lease("s2", "B"), lease("s3", "B")]
    plan = plan_leases(dead, me="A", now_ms=later, held=["s0", "s1"])
    assert plan.live_workers == 1
    assert plan.target == 4
    assert [item.shard_id for item in plan.take] == ["s2", "s3"]


def test_children_wait_until_every_existing_parent_is_drained() -> None:
    parent_a = lease("p1", checkpoint="42")
    parent_b = lease("p2", checkpoint=SHARD_END)
    child = lease("c1", parents=("p1", "p2"))
    by_shard = {x.shard_id: x for x in (parent_a, parent_b, child)}
    known = set(by_shard)
    assert not is_eligible(child, by_shard, known)
    by_shard["p1"] = lease("p1", checkpoint=SHARD_END)
    assert is_eligible(child, by_shard, known)


def test_parent_gone_from_the_stream_does_not_block_but_a_lease_less_parent_does() -> None:
    child = lease("c1", parents=("old",))
    assert is_eligible(child, {"c1": child}, {"c1"})  # "old" aged out of the stream
    assert not is_eligible(child, {"c1": child}, {"c1", "old"})  # its lease is not there yet
    assert not is_eligible(lease("x", checkpoint=SHARD_END), {}, {"x"})


def test_plan_takes_parents_and_skips_blocked_children_and_finished_shards() -> None:
    leases = [
        lease("shardId-1", checkpoint=SHARD_END),
        lease("shardId-2"),
        lease("shardId-3", parents=("shardId-1",)),
        lease("shardId-4", parents=("shardId-2",)),
    ]
    plan = plan_leases(leases, me="A", now_ms=NOW)
    assert [item.shard_id for item in plan.take] == ["shardId-2", "shardId-3"]
    assert plan.target == 2


def test_unknown_shards_and_max_leases_are_respected() -> None:
    leases = [lease(f"s{i}") for i in range(4)]
    plan = plan_leases(leases, me="A", now_ms=NOW, known_shards={"s0", "s1", "s2"},
                       max_leases=2)
    assert [item.shard_id for item in plan.take] == ["s0", "s1"]
    with pytest.raises(ValueError, match="max_leases"):
        plan_leases(leases, me="A", now_ms=NOW, max_leases=0)


def test_parents_first_orders_the_shard_graph() -> None:
    shards = [("c", ("a", "b")), ("a", ()), ("d", ("c",)), ("b", ("z",))]
    order = [shard for shard, _ in parents_first(shards)]
    assert order.index("a") < order.index("c")
    assert order.index("b") < order.index("c") < order.index("d")
    assert sorted(order) == ["a", "b", "c", "d"]
