"""Speed: a page of DynamoDB stream records is encoded directly.

moto keeps each stream record in the API's JSON shape, but the generic serializer walked
every attribute of every image against the model: 1.2 s for a page of 1,000 device records
on a busy emulator, which made the outbox relay the slowest step of the devices pipeline.
The page is encoded as the serializer would (timestamps as epoch seconds to the
millisecond), except a page holding a binary attribute, which is left to the serializer.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any

from shared.emulator._fixes import Fix, FixKind, replace, unpatched

__all__ = ["FIX", "apply", "stream_page_json"]


@functools.cache
def _timestamp_codec() -> tuple[Any, Any]:
    """moto's JSON timestamp writer and botocore's datetime reader (imported once)."""
    from botocore.utils import parse_to_aware_datetime
    from moto.core.serialize import TimestampSerializer

    return TimestampSerializer._timestamp_unixtimestamp, parse_to_aware_datetime


def _epoch(value: Any) -> Any:
    """A datetime as moto's serializer writes a JSON timestamp (epoch seconds, to the ms)."""
    if isinstance(value, datetime.datetime):
        write, aware = _timestamp_codec()
        return write(aware(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def stream_page_json(result: dict[str, Any]) -> str | None:
    """A DynamoDB Streams GetRecords result as its JSON body, or None when a record holds a
    binary attribute (moto's serializer re-encodes those: left to it)."""
    body = json.dumps(result, default=_epoch)
    return None if '"B": ' in body or '"BS": ' in body else body


def apply() -> None:
    from moto.core.responses import ActionResult
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    if unpatched(DynamoDBStreamsHandler, "get_records") is None:
        return

    def get_records(self: Any) -> Any:
        limit = self._get_param("Limit")
        result = self.backend.get_records(self._get_param("ShardIterator"),
                                          1000 if limit is None else limit)
        body = stream_page_json(result)
        return ActionResult(result) if body is None else body

    replace(DynamoDBStreamsHandler, "get_records", get_records)


FIX = Fix(
    name="stream-pages",
    kind=FixKind.SPEED,
    summary="a page of DynamoDB stream records is encoded directly",
    checks=(
        "moto.dynamodbstreams.responses:DynamoDBStreamsHandler.get_records",
        "moto.dynamodbstreams.models:DynamoDBStreamsBackend.get_records",
        "moto.dynamodbstreams.models:ShardIterator.get",
        "moto.dynamodb.models.table:StreamRecord",
        "moto.core.serialize:TimestampSerializer._timestamp_unixtimestamp",
    ),
    verified={"5.2.5": "4c25ef1447896e3a", "5.2.6": "4c25ef1447896e3a"},
    apply=apply,
)
