"""Speed: a Kinesis read starts at its position.

moto numbers a shard's records 1, 2, 3 ... (each the last plus one) in an ordered dict, but
walked the whole shard to find the records after a position, and built a list of every key
to find the last one on every put: both grow with the stream. Here a read steps from the
position; where the numbering has a gap, moto's own walk answers.

A record's `created_at` is a float (epoch seconds) up to moto 5.2.5 and a datetime from
5.2.6; `millis_behind` reads both.
"""

from __future__ import annotations

import datetime
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply", "millis_behind"]


def millis_behind(newest: Any, record: Any) -> int:
    """Milliseconds between two records' arrival, as moto computes MillisBehindLatest."""
    behind = newest.created_at - record.created_at
    seconds = behind.total_seconds() if isinstance(behind, datetime.timedelta) else behind
    return int(seconds * 1000)


def apply() -> None:
    from moto.kinesis.models import Shard

    original = unpatched(Shard, "get_records")
    if original is None:
        return

    def get_records(self: Any, last_sequence_id: str, limit: int | None) -> Any:
        records = self.records
        position = int(last_sequence_id)
        if not records or position >= next(reversed(records)):
            return [], position, 0  # nothing after the position: what the walk found
        if position + 1 not in records:
            return original(self, last_sequence_id, limit)  # a gap: moto's own walk
        newest = records[next(reversed(records))]
        results: list[Any] = []
        while position + 1 in records and (limit is None or len(results) < limit):
            position += 1
            results.append(records[position])
        return results, position, millis_behind(newest, results[-1])

    def get_max_sequence_number(self: Any) -> int:
        return next(reversed(self.records)) if self.records else 0

    def get_min_sequence_number(self: Any) -> int:
        return next(iter(self.records)) if self.records else 0

    replace(Shard, "get_records", get_records)
    replace(Shard, "get_max_sequence_number", get_max_sequence_number)
    replace(Shard, "get_min_sequence_number", get_min_sequence_number)


FIX = Fix(
    name="kinesis-reads",
    kind=FixKind.SPEED,
    summary="a Kinesis read starts at its position instead of walking the shard",
    checks=(
        "moto.kinesis.models:Shard.get_records",
        "moto.kinesis.models:Shard.put_record",
        "moto.kinesis.models:Shard.get_max_sequence_number",
        "moto.kinesis.models:Shard.get_min_sequence_number",
        "moto.kinesis.models:Record.__init__",
    ),
    verified={"5.2.5": "81dd0be95846d490", "5.2.6": "6689b1fc6137143b"},
    apply=apply,
)
