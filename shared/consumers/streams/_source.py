"""The seam between the shard consumer core and one streaming service (Kinesis, DynamoDB
Streams): a `ShardSource` lists shards, gets an iterator and reads a page of records. Its
values (`ShardInfo`, `RecordsPage`, `InitialPosition`) and the two read errors every source
raises (`ExpiredIteratorError`, `TrimmedDataError`, via `read_errors()`) live here too.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.aws import aws_errors
from shared.consumers._message import Message, SourceKind
from shared.errors import AwsRequestError, RetryableError

__all__ = [
    "ExpiredIteratorError",
    "InitialPosition",
    "RecordsPage",
    "ShardInfo",
    "ShardSource",
    "TrimmedDataError",
    "read_errors",
]


class InitialPosition(enum.StrEnum):
    """Where a shard without a checkpoint starts. Children of a reshard always start at
    TRIM_HORIZON (their parents were drained first, so nothing is skipped or repeated)."""

    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"


class ExpiredIteratorError(RetryableError):
    """The shard iterator expired (Kinesis: 5 min, DynamoDB Streams: 15 min): get a new one
    from the last processed position."""


class TrimmedDataError(RetryableError):
    """The position asked for is older than the stream's retention (DynamoDB Streams
    TrimmedDataAccessException): read on from the oldest record still retained."""


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """A shard as the stream describes it. `ending_sequence` is set once the shard is closed."""

    shard_id: str
    parent_shard_ids: tuple[str, ...] = ()
    ending_sequence: str | None = None


@dataclass(frozen=True, kw_only=True)
class RecordsPage:
    """One GetRecords answer. `millis_behind` is the service's figure (Kinesis) or None, in
    which case the lag is taken from the last record's approximate arrival time."""

    messages: Sequence[Message]
    next_iterator: str | None
    millis_behind: int | None = None


class ShardSource(Protocol):
    """The seam to one streaming service. Implementations translate SDK errors
    (`shared.aws.aws_errors`) and raise `ExpiredIteratorError` for an expired iterator."""

    @property
    def kind(self) -> SourceKind: ...

    @property
    def name(self) -> str:
        """The stream's name or ARN (logs, failure queue messages)."""
        ...

    @property
    def default_limit(self) -> int: ...

    async def list_shards(self) -> Sequence[ShardInfo]: ...

    async def get_iterator(
        self, shard_id: str, *, after: str | None, initial: InitialPosition
    ) -> str:
        """An iterator just after sequence number `after`, or at `initial` when None."""
        ...

    async def get_records(self, shard_id: str, iterator: str, *, limit: int) -> RecordsPage: ...



@contextlib.contextmanager
def read_errors() -> Iterator[None]:
    """`aws_errors()` for GetShardIterator / GetRecords of either service, with the two
    codes a shard reader acts on made types of their own.

    Raises:
        ExpiredIteratorError: ExpiredIteratorException (the iterator is too old).
        TrimmedDataError: TrimmedDataAccessException (DynamoDB Streams: past retention).
        AwsRequestError, AwsUnavailableError: any other failure, translated.
    """
    try:
        with aws_errors():
            yield
    except AwsRequestError as exc:
        if exc.code == "ExpiredIteratorException":
            raise ExpiredIteratorError(str(exc)) from exc
        if exc.code == "TrimmedDataAccessException":
            raise TrimmedDataError(str(exc)) from exc
        raise
