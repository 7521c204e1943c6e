"""Gap: after a reshard, moto puts new records into the closed parent shard.

moto's `Stream.get_shard_for_key` returns the first shard whose hash range holds the key,
closed or open; a split or merge leaves the parent first in the stream's shards, so every
record put after a reshard lands in a shard that no reader reads past its end (AWS puts it
into the open child that owns the key). Here only open shards are looked at; a key that no
open shard owns (none: the open shards cover the hash space) falls back to moto's answer.

moto's `split_shard` empties the parent and puts its records again through the same lookup;
that one is left as it was (the records stay in the parent, as on AWS, where a reader
drains the parent before its children), by a flag of the splitting thread.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply"]

_splitting = threading.local()


def apply() -> None:
    from moto.kinesis.models import Stream

    original = unpatched(Stream, "get_shard_for_key")
    original_split = unpatched(Stream, "split_shard")
    if original is None or original_split is None:
        return

    def get_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
        found = original(self, partition_key, explicit_hash_key)  # validates, as moto does
        if found is None or found.is_open or getattr(_splitting, "active", False):
            return found
        key = (int(explicit_hash_key) if explicit_hash_key
               else int(hashlib.md5(partition_key.encode()).hexdigest(), 16))  # moto's hash
        for shard in list(self.shards.values()):
            if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
                return shard
        return found

    def split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
        _splitting.active = True
        try:
            original_split(self, shard_to_split, new_starting_hash_key)
        finally:
            _splitting.active = False

    replace(Stream, "get_shard_for_key", get_shard_for_key)
    replace(Stream, "split_shard", split_shard)


FIX = Fix(
    name="kinesis-reshard-puts",
    kind=FixKind.GAP,
    summary="a Kinesis put after a reshard goes to the open child shard, not the closed parent",
    checks=(
        "moto.kinesis.models:Stream.get_shard_for_key",
        "moto.kinesis.models:Stream.split_shard",
        "moto.kinesis.models:Stream.merge_shards",
    ),
    verified={"5.2.6": "c303b2607251486c"},
    apply=apply,
)
