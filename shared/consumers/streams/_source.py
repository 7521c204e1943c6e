"""The seam between the shard consumer core and one streaming service (Kinesis, DynamoDB
Streams): a `ShardSource` lists shards, gets an iterator and reads a page of records. Its
values (`ShardInfo`, `RecordsPage`, `InitialPosition`), the two read errors every source raises
(`ExpiredIteratorError`, `TrimmedDataError`, via `read_errors()`) and the two read calls,
the same on both services but for names (`shard_iterator`, `read_page`), live here too.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.aws import AwsClient, aws_errors, call_decoded
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
    "read_page",
    "shard_iterator",
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


async def read_page(
    client: AwsClient, iterator: str, *, limit: int,
    to_message: Callable[[dict[str, Any]], Message],
) -> RecordsPage:
    """One GetRecords call on `client` (Kinesis or DynamoDB Streams: the same request and
    answer), each record made a `Message` by `to_message`. `millis_behind` is Kinesis'
    MillisBehindLatest (None on DynamoDB Streams, which has none).

    The page is read as wire JSON (`shared.aws.call_decoded`: Kinesis `Data` in base64,
    times in epoch seconds, DynamoDB images already in the DynamoDB JSON Lambda delivers):
    botocore's parser would walk every member of up to 10,000 records (see shared._wire).

    Raises:
        ExpiredIteratorError, TrimmedDataError, AwsRequestError, AwsUnavailableError: as
            `read_errors()`.
    """
    with read_errors():
        response = await call_decoded(client, "GetRecords", ShardIterator=iterator, Limit=limit)
    behind = response.get("MillisBehindLatest")
    return RecordsPage(
        messages=[to_message(record) for record in response.get("Records", [])],
        next_iterator=response.get("NextShardIterator"),
        millis_behind=int(behind) if behind is not None else None,
    )


async def shard_iterator(
    client: AwsClient,
    stream: Mapping[str, str],
    shard_id: str,
    *,
    after: str | None,
    initial: InitialPosition,
    sequence_parameter: str,
) -> str:
    """GetShardIterator on `client` for shard `shard_id` of `stream` (the parameters naming
    the stream: Kinesis `StreamName` / `StreamARN`, DynamoDB Streams `StreamArn`): just after
    sequence number `after` (passed as `sequence_parameter`: Kinesis
    `StartingSequenceNumber`, DynamoDB Streams `SequenceNumber`), or at `initial` when None.

    Raises:
        TrimmedDataError: `after` is older than the stream's retention (DynamoDB Streams).
        AwsRequestError, AwsUnavailableError: as `read_errors()`.
    """
    kwargs: dict[str, Any] = {**stream, "ShardId": shard_id}
    if after is not None:
        kwargs.update({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", sequence_parameter: after})
    else:
        kwargs.update(ShardIteratorType=str(initial))
    with read_errors():
        response = await client.get_shard_iterator(**kwargs)
    return str(response["ShardIterator"])
