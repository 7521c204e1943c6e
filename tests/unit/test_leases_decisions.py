"""Pure lease decisions: fair share, take / steal choice, expiry, parent-before-child."""

from __future__ import annotations

import pytest

from shared.consumers.streams._lease_decisions import (
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


def test_steal_is_a_handoff_request_when_a_timeout_is_set() -> None:
    leases = [lease(f"s{i}", "A") for i in range(4)]
    plan = plan_leases(leases, me="B", now_ms=NOW, handoff_timeout_ms=3_000)
    assert plan.steal is None
    assert plan.request_handoff is not None
    assert plan.request_handoff.shard_id == "s0"


def test_pending_handoff_counts_as_mine_and_blocks_a_second_request() -> None:
    asked = Lease(key="app#s0", shard_id="s0", owner="A", counter=1, expires_at_ms=NOW + 5_000,
                  handoff_to="B", handoff_at_ms=NOW - 1_000)
    leases = [asked, *(lease(f"s{i}", "A") for i in range(1, 4))]
    plan = plan_leases(leases, me="B", now_ms=NOW, handoff_timeout_ms=3_000)
    assert plan.request_handoff is None
    assert plan.steal is None
    assert not plan.take


def test_overdue_handoff_becomes_a_forced_steal() -> None:
    asked = Lease(key="app#s0", shard_id="s0", owner="A", counter=1, expires_at_ms=NOW + 5_000,
                  handoff_to="B", handoff_at_ms=NOW - 3_000)
    leases = [asked, *(lease(f"s{i}", "A") for i in range(1, 4))]
    plan = plan_leases(leases, me="B", now_ms=NOW, handoff_timeout_ms=3_000)
    assert plan.steal == asked
    assert plan.request_handoff is None


def test_released_handoff_lease_is_simply_taken() -> None:
    leases = [lease("s0"), *(lease(f"s{i}", "A") for i in range(1, 4))]
    plan = plan_leases(leases, me="B", now_ms=NOW, handoff_timeout_ms=3_000)
    assert [item.shard_id for item in plan.take] == ["s0"]
    assert plan.request_handoff is not None  # A still holds 3 > 2: one more, politely
    assert plan.request_handoff.shard_id == "s1"
    balanced = [lease("s0", "B"), lease("s1"), lease("s2", "A"), lease("s3", "A")]
    again = plan_leases(balanced, me="B", now_ms=NOW, held=["s0"], handoff_timeout_ms=3_000)
    assert [item.shard_id for item in again.take] == ["s1"]
    assert again.request_handoff is None


def test_leases_asked_by_another_worker_are_not_asked_again() -> None:
    asked = Lease(key="app#s0", shard_id="s0", owner="A", counter=1, expires_at_ms=NOW + 5_000,
                  handoff_to="C", handoff_at_ms=NOW)
    leases = [asked, *(lease(f"s{i}", "A") for i in range(1, 4))]
    plan = plan_leases(leases, me="B", now_ms=NOW, handoff_timeout_ms=3_000)
    assert plan.request_handoff is not None
    assert plan.request_handoff.shard_id == "s1"


def test_lease_released_for_a_handoff_is_reserved_for_the_asker() -> None:
    released = Lease(key="app#s0", shard_id="s0", owner=None, counter=1, expires_at_ms=0,
                     handoff_to="B", handoff_at_ms=NOW - 500)
    leases = [released, *(lease(f"s{i}", "A") for i in range(1, 4))]
    a_plan = plan_leases(leases, me="A", now_ms=NOW, held=["s1", "s2", "s3"],
                         handoff_timeout_ms=3_000)
    assert a_plan.live_workers == 2  # B asked, so B is alive though it holds nothing yet
    assert not a_plan.take
    b_plan = plan_leases(leases, me="B", now_ms=NOW, handoff_timeout_ms=3_000)
    assert [item.shard_id for item in b_plan.take] == ["s0"]
    # A reservation older than the timeout is void: anyone may take the lease.
    late = plan_leases(leases, me="A", now_ms=NOW + 3_000, held=["s1", "s2", "s3"],
                       handoff_timeout_ms=3_000)
    assert [item.shard_id for item in late.take] == ["s0"]
