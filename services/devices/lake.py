"""Readings to the lake: every applied reading, as rows, through Firehose to Parquet in S3.

    lake = FirehoseLake(aws, delivery_stream="fleetline-readings")
    await lake.put(reading_rows(record, arrival=...))   # raises LakeError

The telemetry worker sends the readings it applied (after decoding, dedupe and the
residency check: a refused or malformed record never reaches the lake) before it writes
device state and before the shard is checkpointed, so every reading is in the lake at least
once. A reading can reach it twice (a batch retried after its readings were taken); the
monthly report counts readings by (device, seq), so a repeat changes no figure.

Rows. One JSON document per metric of a reading (a long table: the same SQL then runs on
Athena and on DuckDB without map functions, and a new metric needs no schema change):
`tenant_id, device_id, seq, ts, arrival, firmware, metric, value` (the Glue table's columns,
`LAKE_COLUMNS`) plus `zone` and `date` (UTC day of `ts`), the partition keys: Firehose's
dynamic partitioning reads them with its JQ query into the prefix
`readings/zone=<zone>/date=<YYYY-MM-DD>/` and the format conversion writes only the table's
columns to Parquet.

Records. Firehose bills ingestion per record rounded up to 5 KB, so one record per reading
(about 300 bytes) would be billed 16 times its size: rows are packed into records of up to
`MAX_ROWS_PER_RECORD` documents (Firehose's limit for multi-record deaggregation), and
records into PutRecordBatch calls of up to 500 records and 4 MiB.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import anyio
import orjson
import structlog

from services.devices.domain import Telemetry
from shared.aws import AwsClients, aws_errors
from shared.errors import RetryableError

__all__ = [
    "LAKE_COLUMNS",
    "LAKE_PREFIX",
    "PARTITION_KEYS",
    "FirehoseLake",
    "LakeError",
    "LakeSink",
    "MemoryLake",
    "pack_records",
    "reading_rows",
]

log = structlog.get_logger("services.devices.lake")

# The Glue table's columns, in order, with their Glue types (deploy/template.yaml, LakeTable).
LAKE_COLUMNS: Final = (
    ("tenant_id", "string"),
    ("device_id", "string"),
    ("seq", "bigint"),
    ("ts", "double"),
    ("arrival", "double"),
    ("firmware", "string"),
    ("metric", "string"),
    ("value", "double"),
)
PARTITION_KEYS: Final = ("zone", "date")
LAKE_PREFIX: Final = "readings/"
MAX_ROWS_PER_RECORD: Final = 500
MAX_RECORD_BYTES: Final = 1000 * 1024
MAX_RECORDS_PER_CALL: Final = 500
MAX_BYTES_PER_CALL: Final = 4 * 1024 * 1024
PUT_ATTEMPTS: Final = 4

_DAY_CACHE: dict[int, str] = {}


def _utc_date(ts: float) -> str:
    day = int(ts // 86400)
    text = _DAY_CACHE.get(day)
    if text is None:
        text = _DAY_CACHE[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    return text


def reading_rows(record: Telemetry, *, arrival: float) -> list[bytes]:
    """The lake's rows of one applied reading: one JSON document (newline-terminated) per
    metric, with the partition keys `zone` and `date` (UTC day of the device's `ts`)."""
    head = {
        "tenant_id": record.tenant_id,
        "device_id": record.device_id,
        "seq": record.seq,
        "ts": record.ts,
        "arrival": arrival,
        "firmware": record.firmware,
        "zone": record.zone,
        "date": _utc_date(record.ts),
    }
    rows = []
    for metric, value in record.readings.items():
        head["metric"] = metric
        head["value"] = value
        rows.append(orjson.dumps(head, option=orjson.OPT_APPEND_NEWLINE))
    return rows


def pack_records(
    rows: Sequence[bytes], *, max_rows: int = MAX_ROWS_PER_RECORD,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[bytes]:
    """`rows` concatenated into as few Firehose records as fit `max_rows` documents and
    `max_bytes` each, in order. Pure.

    Raises:
        ValueError: a single row is longer than `max_bytes`.
    """
    records: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for row in rows:
        if len(row) > max_bytes:
            raise ValueError(f"a row of {len(row)} bytes exceeds max_bytes={max_bytes}")
        if current and (len(current) >= max_rows or size + len(row) > max_bytes):
            records.append(b"".join(current))
            current, size = [], 0
        current.append(row)
        size += len(row)
    if current:
        records.append(b"".join(current))
    return records


def _calls(records: Sequence[bytes]) -> list[list[bytes]]:
    calls: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        if current and (len(current) >= MAX_RECORDS_PER_CALL
                        or size + len(record) > MAX_BYTES_PER_CALL):
            calls.append(current)
            current, size = [], 0
        current.append(record)
        size += len(record)
    if current:
        calls.append(current)
    return calls


class LakeError(RetryableError):
    """Readings could not be handed to the lake after retries; the batch is retried."""


class LakeSink(Protocol):
    """Where the telemetry worker sends the rows of the readings it applied."""

    async def put(self, rows: Sequence[bytes]) -> None:
        """Hand `rows` over durably (accepted by the delivery stream) or raise LakeError."""
        ...


class FirehoseLake:
    """The lake on AWS: PutRecordBatch to the readings delivery stream (see the module
    docstring for how rows are packed). `requests` counts the calls made."""

    def __init__(self, aws: AwsClients, delivery_stream: str) -> None:
        if not delivery_stream:
            raise ValueError("delivery_stream must name the readings delivery stream")
        self._aws = aws
        self._stream = delivery_stream
        self.requests = 0

    async def put(self, rows: Sequence[bytes]) -> None:
        """Send `rows`; entries Firehose did not take are sent again (`PUT_ATTEMPTS`).

        Raises:
            LakeError: some rows were still not taken, or the call failed with a retryable
                error every time.
            shared.errors types: a call refused for a reason retrying cannot change (the
                stream missing, not authorised).
        """
        if not rows:
            return
        firehose = await self._aws.client("firehose")
        for call in _calls(pack_records(rows)):
            pending = call
            for attempt in range(PUT_ATTEMPTS):
                try:
                    with aws_errors():
                        answer: dict[str, Any] = await firehose.put_record_batch(
                            DeliveryStreamName=self._stream,
                            Records=[{"Data": record} for record in pending])
                except RetryableError as exc:
                    log.warning("lake put failed; retrying", error=str(exc), attempt=attempt)
                    await anyio.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                finally:
                    self.requests += 1
                if not answer.get("FailedPutCount"):
                    pending = []
                    break
                pending = [record for record, entry in zip(
                    pending, answer.get("RequestResponses", []), strict=True)
                    if entry.get("ErrorCode")]
                await anyio.sleep(min(0.05 * 2**attempt, 1.0))
            if pending:
                raise LakeError(f"{len(pending)} lake record(s) not taken by {self._stream} "
                                f"after {PUT_ATTEMPTS} attempts")


class MemoryLake:
    """The lake in a list, for tests: `rows` holds every row put, `fail` makes the next
    puts raise LakeError."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.puts = 0
        self.fail = 0

    async def put(self, rows: Sequence[bytes]) -> None:
        if self.fail:
            self.fail -= 1
            raise LakeError("memory lake told to fail")
        self.puts += 1
        self.rows.extend(orjson.loads(row) for row in rows)
