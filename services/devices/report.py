"""`fleetline report monthly`: per tenant, firmware version and day, the month's readings from
the lake: events, devices reporting, min / avg / max per metric, uptime.

    partial = await run_duckdb(aws, bucket=..., zone="eu", month="2026-12")   # locally
    partial = await run_athena(aws, workgroup=..., database=..., zone="eu", month=...)
    report = combine([partial_eu, partial_us])     # across zones: aggregates only

One SQL text (`monthly_sql`) runs on Athena (the stack's workgroup, with its bytes-scanned
limit) and on DuckDB over a pyarrow dataset of the same Parquet objects in the emulator's
S3 (DuckDB cannot load httpfs here). It reads one zone's partitions of one month (the WHERE
names the partition columns, so only those files are read: `Partial.bytes_scanned`) and
returns partial aggregates per tenant, firmware, day and metric: the sums, counts, minima
and maxima that combine exactly. Each zone's query runs in its own Region, and only these
rows leave it; `combine` adds them up (a device belongs to one zone, so device counts add).

Definitions:
- a reading is counted once per (device, seq): a reading the lake holds twice (at least once
  delivery) changes no figure;
- events: readings of the (tenant, firmware, day); devices: devices with at least one;
- min / avg / max: per metric over those readings;
- uptime: the share of the day's 288 five-minute slots in which a device reported, averaged
  over the devices reporting that day (a device reporting every 200 s all day: 100 %).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from shared.aws import AwsClients, aws_errors
from shared.errors import PermanentError

__all__ = [
    "DayFigures",
    "Partial",
    "ReportError",
    "combine",
    "month_days",
    "monthly_sql",
    "run_athena",
    "run_duckdb",
]

SLOTS_PER_DAY: Final = 288
SLOT_SECONDS: Final = 300
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_ZONE = re.compile(r"^[a-z]{2,8}$")
PARTIAL_COLUMNS: Final = ("tenant_id", "firmware", "day", "metric", "devices", "readings",
                          "total", "low", "high", "slots")


class ReportError(PermanentError):
    """The report cannot run: a bad month or zone, no lake, or the query failed."""


def month_days(month: str) -> tuple[str, str]:
    """The first and last day (`YYYY-MM-DD`) of `month` (`YYYY-MM`).

    Raises:
        ReportError: `month` is not `YYYY-MM`.
    """
    match = _MONTH.match(month)
    if match is None:
        raise ReportError(f"month must be YYYY-MM, got {month!r}")
    year, number = int(match.group(1)), int(match.group(2))
    following = (year + (number == 12), number % 12 + 1)
    last = time.gmtime(time.mktime((*following, 1, 12, 0, 0, 0, 0, 0)) - 86400)
    return f"{month}-01", f"{month}-{last.tm_mday:02d}"


def monthly_sql(table: str, *, zone: str, month: str) -> str:
    """The query of one zone's month over `table` (partial aggregates, `PARTIAL_COLUMNS`).
    Literal values only (validated here), as Athena's and DuckDB's dialects share them.

    Raises:
        ReportError: `zone` or `month` is malformed.
    """
    if not _ZONE.match(zone):
        raise ReportError(f"zone must be a zone name such as 'eu', got {zone!r}")
    first, last = month_days(month)
    return f"""
WITH r AS (
  SELECT DISTINCT tenant_id, COALESCE(firmware, 'unknown') AS firmware, "date" AS day,
         device_id, seq, ts, metric, value
  FROM {table}
  WHERE zone = '{zone}' AND "date" BETWEEN '{first}' AND '{last}'
),
per_device AS (
  SELECT tenant_id, firmware, day, metric, device_id,
         COUNT(*) AS readings, SUM(value) AS total, MIN(value) AS low, MAX(value) AS high,
         COUNT(DISTINCT CAST(floor(ts / {SLOT_SECONDS}) AS BIGINT)) AS slots
  FROM r
  GROUP BY tenant_id, firmware, day, metric, device_id
)
SELECT tenant_id, firmware, day, metric, COUNT(*) AS devices, SUM(readings) AS readings,
       SUM(total) AS total, MIN(low) AS low, MAX(high) AS high, SUM(slots) AS slots
FROM per_device
GROUP BY tenant_id, firmware, day, metric
ORDER BY tenant_id, firmware, day, metric
""".strip()


@dataclass(frozen=True)
class Partial:
    """One zone's partial aggregates (rows of `PARTIAL_COLUMNS`) and what its query read."""

    zone: str
    region: str
    rows: tuple[tuple[Any, ...], ...]
    bytes_scanned: int
    files: int = 0
    engine: str = "duckdb"


@dataclass
class DayFigures:
    """One (tenant, firmware, day) of the report."""

    tenant_id: str
    firmware: str
    day: str
    events: int = 0
    devices: int = 0
    uptime: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "firmware": self.firmware, "day": self.day,
                "events": self.events, "devices": self.devices,
                "uptime": round(self.uptime, 4), "metrics": self.metrics}


def combine(partials: Iterable[Partial]) -> list[DayFigures]:
    """The report from the zones' partial aggregates, ordered by tenant, firmware, day.
    Pure: sums and counts add, minima and maxima fold, averages are sum / count."""
    acc: dict[tuple[str, str, str, str], list[float]] = {}
    for partial in partials:
        for row in partial.rows:
            tenant, firmware, day, metric, devices, readings, total, low, high, slots = row
            key = (str(tenant), str(firmware), str(day), str(metric))
            have = acc.get(key)
            if have is None:
                acc[key] = [float(devices), float(readings), float(total), float(low),
                            float(high), float(slots)]
            else:
                have[0] += devices
                have[1] += readings
                have[2] += total
                have[3] = min(have[3], float(low))
                have[4] = max(have[4], float(high))
                have[5] += slots
    days: dict[tuple[str, str, str], DayFigures] = {}
    for (tenant, firmware, day, metric), (devices, readings, total, low, high, slots) in \
            sorted(acc.items()):
        figures = days.setdefault((tenant, firmware, day), DayFigures(tenant, firmware, day))
        figures.metrics[metric] = {"min": low, "avg": round(total / readings, 4), "max": high,
                                   "readings": int(readings)}
        # Every reading carries its metrics: the metric seen most is the day's events.
        if readings > figures.events:
            figures.events = int(readings)
            figures.devices = int(devices)
            figures.uptime = slots / (devices * SLOTS_PER_DAY) if devices else 0.0
    return list(days.values())


# --------------------------------------------------------------------------- DuckDB (local)


def _s3_filesystem(aws: AwsClients) -> Any:
    from pyarrow import fs

    endpoint = (aws.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    if not endpoint:
        raise ReportError("the local report needs an emulator endpoint (AWS_ENDPOINT_URL); "
                          "on AWS it runs on Athena")
    scheme, _, host = endpoint.partition("://")
    return fs.S3FileSystem(
        endpoint_override=host, scheme=scheme, region=aws.region,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))


def _query_duckdb(filesystem: Any, bucket: str, zone: str, month: str
                  ) -> tuple[list[tuple[Any, ...]], int, int]:
    import duckdb
    import pyarrow.dataset as ds
    from pyarrow import fs

    root = f"{bucket}/readings"
    if filesystem.get_file_info(root).type == fs.FileType.NotFound:
        return [], 0, 0
    partitioning = ds.partitioning(
        __import__("pyarrow").schema([("zone", "string"), ("date", "string")]),
        flavor="hive")
    readings = ds.dataset(root, filesystem=filesystem, format="parquet",
                          partitioning=partitioning)
    first, last = month_days(month)
    month_filter = ((ds.field("zone") == zone) & (ds.field("date") >= first)
                    & (ds.field("date") <= last))
    paths = [fragment.path for fragment in readings.get_fragments(filter=month_filter)]
    scanned = sum(info.size for info in filesystem.get_file_info(paths)) if paths else 0
    connection = duckdb.connect()
    try:
        connection.register("readings", readings)
        rows = connection.execute(monthly_sql("readings", zone=zone, month=month)).fetchall()
    finally:
        connection.close()
    return [tuple(row) for row in rows], scanned, len(paths)


async def run_duckdb(aws: AwsClients, *, bucket: str, zone: str, month: str) -> Partial:
    """The zone's partial aggregates, computed here with DuckDB over the Parquet objects of
    `bucket` in the emulator's S3 (`aws`'s endpoint). `bytes_scanned`: the size of the files
    in the month's partitions of the zone (the only ones the query reads).

    Raises:
        ReportError: no emulator endpoint, or a malformed zone or month.
    """
    monthly_sql("readings", zone=zone, month=month)  # validates before any I/O
    filesystem = _s3_filesystem(aws)
    rows, scanned, files = await anyio.to_thread.run_sync(
        _query_duckdb, filesystem, bucket, zone, month)
    return Partial(zone=zone, region=aws.region, rows=tuple(rows), bytes_scanned=scanned,
                   files=files, engine="duckdb")


# --------------------------------------------------------------------------- Athena (AWS)


async def run_athena(aws: AwsClients, *, workgroup: str, database: str, zone: str,
                     month: str, poll: float = 1.0) -> Partial:
    """The zone's partial aggregates from Athena in the workgroup (its output location and
    bytes-scanned limit apply); `bytes_scanned` is Athena's DataScannedInBytes.

    Raises:
        ReportError: the query failed or was cancelled (the workgroup's limit among the
            reasons), or a malformed zone or month.
        shared.errors types: the calls failed.
    """
    sql = monthly_sql(f'"{database}"."readings"', zone=zone, month=month)
    athena = await aws.client("athena")
    with aws_errors():
        started = await athena.start_query_execution(
            QueryString=sql, WorkGroup=workgroup,
            QueryExecutionContext={"Database": database})
    query_id = started["QueryExecutionId"]
    while True:
        with aws_errors():
            execution = (await athena.get_query_execution(
                QueryExecutionId=query_id))["QueryExecution"]
        state = execution["Status"]["State"]
        if state == "SUCCEEDED":
            break
        if state in ("FAILED", "CANCELLED"):
            reason = execution["Status"].get("StateChangeReason", state)
            raise ReportError(f"Athena query {query_id} {state.lower()}: {reason}")
        await anyio.sleep(poll)
    rows: list[tuple[Any, ...]] = []
    kwargs: dict[str, Any] = {"QueryExecutionId": query_id}
    header = True
    while True:
        with aws_errors():
            page = await athena.get_query_results(**kwargs)
        for row in page["ResultSet"]["Rows"]:
            if header:  # the first row of the first page holds the column names
                header = False
                continue
            values = [cell.get("VarCharValue") for cell in row["Data"]]
            rows.append((*values[:4], *(float(v) for v in values[4:])))
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    scanned = int(execution.get("Statistics", {}).get("DataScannedInBytes", 0))
    return Partial(zone=zone, region=aws.region, rows=tuple(rows), bytes_scanned=scanned,
                   engine="athena")


def render(report: Sequence[DayFigures], partials: Sequence[Partial]) -> str:
    """The report as a text table, then each zone's bytes scanned."""
    lines = [f"{'tenant':<8} {'firmware':<10} {'day':<10} {'events':>8} {'devices':>7} "
             f"{'uptime':>7}  metrics (min / avg / max)"]
    for f in report:
        metrics = "; ".join(f"{m} {v['min']:g} / {v['avg']:g} / {v['max']:g}"
                            for m, v in sorted(f.metrics.items()))
        lines.append(f"{f.tenant_id:<8} {f.firmware:<10} {f.day:<10} {f.events:>8} "
                     f"{f.devices:>7} {f.uptime:>6.1%}  {metrics}")
    for p in partials:
        lines.append(f"zone {p.zone} ({p.region}, {p.engine}): {p.bytes_scanned:,} bytes "
                     f"scanned in {p.files or '-'} file(s); {len(p.rows)} aggregate rows "
                     "left the Region")
    return "\n".join(lines)


def as_json(report: Sequence[DayFigures], partials: Sequence[Partial]) -> dict[str, Any]:
    return {"days": [f.as_dict() for f in report],
            "zones": [{"zone": p.zone, "region": p.region, "engine": p.engine,
                       "bytes_scanned": p.bytes_scanned, "files": p.files,
                       "aggregate_rows": len(p.rows)} for p in partials]}


def zone_outputs(outputs: Mapping[str, str]) -> tuple[str, str, str]:
    """(lake bucket, Glue database, Athena workgroup) from a stack's outputs.

    Raises:
        ReportError: the stack has no lake (deployed before it).
    """
    try:
        return outputs["LakeBucket"], outputs["LakeDatabase"], outputs["AnalyticsWorkGroup"]
    except KeyError as exc:
        raise ReportError(f"the stack has no {exc.args[0]} output: deploy it again") from None
