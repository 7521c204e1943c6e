"""Pure lease decisions for the stream consumers: which shard leases a worker takes, which one
it steals, when a lease counts as expired, and when a child shard may start.

No I/O here: `_leases.py` reads and writes the table, `_stream.py` acts on these answers.

Terms
    lease       one item per shard in the lease table: owner, counter, expiry, checkpoint,
                parent shard ids.
    counter     the fencing token. Every change of owner (take, steal, retake) increments it;
                renewals and checkpoints do not. Every write by an owner is conditional on
                `owner = me AND counter = the value I took`, so a worker that lost its lease
                can neither renew nor checkpoint it.
    expiry      epoch milliseconds on the owner's clock (`now + lease_duration`) at its last
                renewal or checkpoint. A lease whose expiry lies in the past on the reader's
                clock is up for grabs. Clock skew assumption: worker clocks agree to well
                within `lease_duration - renew_interval` (AWS Time Sync / NTP keep them within
                milliseconds); a larger skew can make a live lease look expired, which costs
                duplicate deliveries, never a lost record (the counter fences the old owner).
    live worker a worker that owns at least one unexpired lease of an unfinished shard. Liveness
                is derived from lease renewals; there is no separate heartbeat item. A new
                worker with no lease yet always counts itself.
    hand-off    a steal is first a request: the thief writes `handoff_to = thief` on the
                victim's lease; the victim finishes its in-flight batch, checkpoints and
                releases the lease, which stays reserved for the thief (other workers leave it
                alone, and count the thief as live) until the thief takes it: no record is
                delivered twice. Only if the victim has not released within the hand-off
                timeout does the thief take the lease by force (the counter fences the victim
                out); a reservation older than the timeout is void.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "SHARD_END",
    "Lease",
    "LeasePlan",
    "fair_share",
    "is_eligible",
    "is_expired",
    "is_reserved",
    "live_workers",
    "parents_first",
    "plan_leases",
]

SHARD_END = "SHARD_END"
"""Checkpoint of a shard that was read to its end (closed by a reshard and drained)."""


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A snapshot of one lease item."""

    key: str  # "<application>#<shard id>"
    shard_id: str
    owner: str | None = None
    counter: int = 0
    expires_at_ms: int = 0
    checkpoint: str | None = None  # a sequence number, SHARD_END, or None (never processed)
    parent_shard_ids: tuple[str, ...] = field(default_factory=tuple)
    handoff_to: str | None = None  # a worker asked the owner to hand this lease over
    handoff_at_ms: int = 0  # when it asked (its clock)

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


@dataclass(frozen=True, kw_only=True)
class LeasePlan:
    """What one rebalancing round does: take `take` (free or expired leases); ask the
    most-loaded worker to hand over `request_handoff`, or take `steal` by force when an earlier
    request timed out (at most one of the two). `target` is this worker's fair share."""

    take: tuple[Lease, ...] = ()
    request_handoff: Lease | None = None
    steal: Lease | None = None
    target: int = 0
    live_workers: int = 1


def is_expired(lease: Lease, now_ms: int) -> bool:
    """True when nobody holds `lease` at `now_ms`: no owner, or its expiry has passed."""
    return lease.owner is None or lease.expires_at_ms <= now_ms


def fair_share(active_leases: int, workers: int) -> int:
    """ceil(active_leases / workers): the most leases any one worker should hold.

    Raises:
        ValueError: `workers` is less than 1 or `active_leases` is negative.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if active_leases < 0:
        raise ValueError(f"active_leases must be non-negative, got {active_leases}")
    return math.ceil(active_leases / workers)


def is_eligible(
    lease: Lease, leases: Mapping[str, Lease], known_shards: Collection[str]
) -> bool:
    """True when the shard of `lease` may be processed: it is not finished, and every parent
    that still exists in the stream has been drained (checkpoint SHARD_END).

    `leases` maps shard id -> lease. A parent missing from `known_shards` has aged out of the
    stream (past retention), so it cannot hold records back; a parent that exists but has no
    lease yet blocks its child until the lease is created and drained.
    """
    if lease.finished:
        return False
    for parent in lease.parent_shard_ids:
        if parent not in known_shards:
            continue
        parent_lease = leases.get(parent)
        if parent_lease is None or not parent_lease.finished:
            return False
    return True


def is_reserved(lease: Lease, now_ms: int, handoff_timeout_ms: int | None) -> bool:
    """True while a hand-off request on `lease` is fresh (younger than the timeout): the
    lease is meant for `handoff_to`, even after its owner released it."""
    return (
        handoff_timeout_ms is not None
        and lease.handoff_to is not None
        and now_ms - lease.handoff_at_ms < handoff_timeout_ms
    )


def live_workers(
    leases: Iterable[Lease], now_ms: int, me: str, handoff_timeout_ms: int | None = None
) -> set[str]:
    """Workers that hold at least one unexpired lease of an unfinished shard, or asked for a
    hand-off recently (a newcomer without leases yet), plus `me`."""
    workers: set[str] = {me}
    for lease in leases:
        if lease.finished:
            continue
        if lease.owner is not None and not is_expired(lease, now_ms):
            workers.add(lease.owner)
        if lease.handoff_to is not None and is_reserved(lease, now_ms, handoff_timeout_ms):
            workers.add(lease.handoff_to)
    return workers


def plan_leases(
    leases: Iterable[Lease],
    *,
    me: str,
    now_ms: int,
    held: Collection[str] = (),
    known_shards: Collection[str] | None = None,
    max_leases: int | None = None,
    handoff_timeout_ms: int | None = None,
) -> LeasePlan:
    """Decide one rebalancing round for worker `me`.

    - Only leases of shards in `known_shards` (default: all) that are eligible count
      (`is_eligible`): finished shards and children of undrained parents are left alone.
    - target = fair_share(eligible leases, live workers), capped by `max_leases`.
    - `held` are the shard ids this worker is processing; they count as its own even when the
      table snapshot is a moment old. Hand-offs pending to `me` count as its own too, so it
      never asks for more than its share.
    - Take free or expired leases (not held by me) until the target is reached, in shard id
      order so that parents, which have lower ids, come first.
    - If still short, steal one lease from the most-loaded other live worker when it holds
      more than the target, or exactly the target while this worker is short by two or more
      (so 4 shards over 3 workers settle at 2/1/1, not 2/2/0). Ties go to the smaller worker id;
      the lease is that worker's lease with the smallest shard id and no pending hand-off.
      With `handoff_timeout_ms` the steal is a hand-off request; a request of mine older than
      the timeout becomes a forced steal. Without it, every steal is forced.

    Raises:
        ValueError: `max_leases` is given and less than 1, or `handoff_timeout_ms` < 0.
    """
    if max_leases is not None and max_leases < 1:
        raise ValueError(f"max_leases must be at least 1, got {max_leases}")
    if handoff_timeout_ms is not None and handoff_timeout_ms < 0:
        raise ValueError(f"handoff_timeout_ms must be non-negative, got {handoff_timeout_ms}")
    all_leases = list(leases)
    by_shard = {lease.shard_id: lease for lease in all_leases}
    known = set(by_shard) if known_shards is None else set(known_shards)
    held_set = set(held)
    active = sorted(
        (
            lease
            for lease in all_leases
            if lease.shard_id in known and is_eligible(lease, by_shard, known)
        ),
        key=lambda lease: lease.shard_id,
    )
    workers = live_workers(active, now_ms, me, handoff_timeout_ms)
    target = fair_share(len(active), len(workers))
    if max_leases is not None:
        target = min(target, max_leases)

    def live_elsewhere(lease: Lease) -> bool:
        return (
            lease.owner is not None
            and lease.owner != me
            and lease.shard_id not in held_set
            and not is_expired(lease, now_ms)
        )

    mine = {lease.shard_id for lease in active if lease.shard_id in held_set}
    pending = [lease for lease in active if live_elsewhere(lease) and lease.handoff_to == me]
    need = target - len(mine) - len(pending)
    plan = LeasePlan(target=target, live_workers=len(workers))
    overdue = [
        lease for lease in pending
        if handoff_timeout_ms is not None and now_ms - lease.handoff_at_ms >= handoff_timeout_ms
    ]
    if need <= 0 and not overdue:
        return plan

    free = [
        lease
        for lease in active
        if lease.shard_id not in held_set
        and is_expired(lease, now_ms)
        and (lease.handoff_to in (None, me) or not is_reserved(lease, now_ms, handoff_timeout_ms))
    ]
    take = tuple(free[: max(need, 0)])
    need -= len(take)
    if overdue:  # the owner did not hand over in time: take it by force
        return LeasePlan(take=take, steal=overdue[0], target=target, live_workers=len(workers))
    if need <= 0 or pending:  # one hand-off at a time
        return LeasePlan(take=take, target=target, live_workers=len(workers))
    load: Counter[str] = Counter(str(lease.owner) for lease in active if live_elsewhere(lease))
    if not load:
        return LeasePlan(take=take, target=target, live_workers=len(workers))
    victim, count = min(load.items(), key=lambda item: (-item[1], item[0]))
    if not (count > target or (count == target and need > 1)):
        return LeasePlan(take=take, target=target, live_workers=len(workers))
    candidate = next(
        (
            lease
            for lease in active
            if lease.owner == victim and live_elsewhere(lease) and lease.handoff_to is None
        ),
        None,
    )
    if candidate is None:
        return LeasePlan(take=take, target=target, live_workers=len(workers))
    if handoff_timeout_ms is None:
        return LeasePlan(take=take, steal=candidate, target=target, live_workers=len(workers))
    return LeasePlan(
        take=take, request_handoff=candidate, target=target, live_workers=len(workers)
    )

def parents_first(shards: Iterable[tuple[str, Sequence[str]]]) -> list[tuple[str, Sequence[str]]]:
    """`shards` as (shard id, parent ids), ordered so that every parent comes before its
    children (lease creation order: a child lease never exists without its parent's)."""
    items = list(shards)
    parents_of = {shard_id: tuple(parents) for shard_id, parents in items}
    ordered: list[tuple[str, Sequence[str]]] = []
    placed: set[str] = set()

    def place(shard_id: str, trail: frozenset[str]) -> None:
        if shard_id in placed or shard_id not in parents_of or shard_id in trail:
            return
        for parent in parents_of[shard_id]:
            place(parent, trail | {shard_id})
        placed.add(shard_id)
        ordered.append((shard_id, parents_of[shard_id]))

    for shard_id, _ in items:
        place(shard_id, frozenset())
    return ordered
